//! The simulated world: N instances of the shipped validator state machine
//! ([`Validator`], `core/validator.rs`) over the virtual network of `net.rs`, with the faults of
//! `faults.rs`. The world is only a shell: it carries out each instance's [`Outputs`] as the
//! node's actor does (persist to the node's virtual disk, then send, then step
//! [`Input::Persisted`]), delivers messages, fires timers, injects faults and checks invariants.
//! Every protocol decision (batching, voting, hand-off, retries, suspicion, takeover, needs,
//! global promotion) is the state machine's.
//!
//! Signatures are real ed25519 (or, with `Signatures::StandIn`, the registry stand-in of
//! `signatures.rs`, same verdicts, no curve arithmetic), verified where the node verifies them:
//! the shell checks client and gossip envelopes as the node's gossip pipeline does, and the
//! state machine checks everything nested. A Byzantine validator runs an honest state machine
//! and, on top, forges certificates, replays votes, equivocates as an owner, and proposes
//! batches with a wrong `prev`, funding claims homed elsewhere, funding one claim twice, or
//! understating the running total.
//!
//! One event is one step; after every step the invariants of `invariants.rs` are checked, plus
//! the ordering contract: every vote an honest node sends has its lock on its disk already. The
//! run is a pure function of its [`Config`]: the ordered event trace is hashed into
//! [`RunOutcome::trace_hash`], and what happened when is kept in [`RunOutcome::record`].

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use credence_proto::v1 as pb;
use ed25519_dalek::SigningKey;

use super::signatures::{Scheme, Signatures, SimKey};
use crate::core::validator::Signer as _;
use prost::Message;

use crate::config::{DEMO_SCHEMA, LoadedGenesis, Params, local_network};
use crate::core::credentials::{CredentialBook, CredentialRules};
use crate::core::envelope::{self, Kind, KnownSignatures, NetworkId, SignatureCheck, Verified, seal_with};
use crate::core::escrow::{CertifiedObject, Digest, Key, Ledger, Millis, slot_of};
use crate::core::validator::{Credentials, HeldChange, Input, LockRecord, Outputs, Setup, Validator};
use crate::core::wire;

use super::faults::{FaultEvent, Profile, Script};
use super::invariants::{Registry, Violation, check_liquidity};
use super::net::{EventQueue, LinkModel, Micros, Partition, Rng, base_one_way_us, region_name};
use super::report::{Summary, percentile};
use super::stress::{ClaimEnd, StressSample, Workload};

/// The virtual wall clock at the start of a run (ms since the Unix epoch).
const T0_MS: Millis = 1_700_000_000_000;
/// What every simulated claim asks.
pub(super) const AMOUNT: u64 = 10;
/// The clock skew the simulated genesis tolerates (`max_clock_skew_ms`).
const CLOCK_SKEW_MS: Millis = 500;
/// A client re-submits a claim not yet certified after this long (doubling, capped).
const CLIENT_RETRY_FIRST_US: Micros = 1_000_000;
const CLIENT_RETRY_MAX_US: Micros = 4_000_000;
/// Liveness is checked this often during the tail.
const CHECK_INTERVAL_US: Micros = 250_000;
/// Each node pulls one peer's certificate log this often (the node's periodic catch-up; pulls
/// driven by heartbeat frontiers come at once).
const SYNC_INTERVAL_US: Micros = 1_000_000;
/// Certificates per sync answer (bounded pages).
const SYNC_PAGE_MAX: usize = 128;
/// How often a Byzantine validator acts.
const BYZANTINE_EVERY_US: Micros = 300_000;
/// Nodes beyond which per-node liquidity checks after each new certificate are left to the
/// oracle's check.
const FULL_NODE_CHECKS_MAX: usize = 64;

/// The sender of client submissions.
const CLIENT: usize = usize::MAX;

/// The genesis `takeover_after` the simulator runs with (`Params::default()`).
pub fn takeover_after_ms() -> Millis {
    Params::default().takeover_after_ms
}

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
    /// Feed each state machine a clock that never steps back within one process life (what
    /// the node's actor does); false reproduces the stall a stepping-back clock causes.
    pub monotonic_clock: bool,
    /// Certificates a node stored survive its crash (sled survives a killed process); false
    /// models a node that loses them and must sync everything back.
    pub durable_ledger: bool,
    /// Heartbeats are delivered. Off only for the scale projection, whose figures leave
    /// heartbeat traffic out (every peer then stays suspected, so nothing is taken over).
    pub heartbeats: bool,
    /// Takeover at the genesis `takeover_after`. Off, `takeover_after` is set beyond the run
    /// (an owner that fails for good stalls its bucket: safe, not live). On in scenarios; in
    /// the random profiles only when asked, because there a lock split can stall a bucket.
    pub takeover: bool,
    /// Exactly these faults instead of the profile's seeded plan (the profile still sets the
    /// links and clocks).
    pub script: Option<Script>,
    /// How signatures are made and checked (the stand-in for large runs).
    pub signatures: Signatures,
    /// A stress workload (`stress.rs`): budgets, claim streams per region, revocations, a slow
    /// region, and liquidity sampled over the run. `None`: the default claim generator.
    pub workload: Option<Workload>,
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
    /// With a workload: the network sampled every `sample_every_us`.
    pub samples: Vec<StressSample>,
    /// Region names, by index.
    pub region_names: Vec<String>,
    /// The amount each region was allocated.
    pub allocations: Vec<u64>,
}

/// One certificate formed in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub bucket: usize,
    pub seq: u64,
    /// A freeze (takeover) rather than a batch.
    pub freeze: bool,
    /// Who proposed it (the owner for a batch, the successor for a freeze) and who collected
    /// its votes (the first node that stored it).
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
    /// A node other than its home owner held it while it waited.
    pub held: bool,
    /// Not certified because another claim of the same claimant was (at most one is paid).
    pub duplicate: bool,
    /// Where it was certified: index into [`RunRecord::certificates`].
    pub certificate: Option<usize>,
    /// The region whose nodes the client submitted to.
    pub region: usize,
    /// With a workload: how the claim ended (refusal reason, revocation, status at every node).
    pub end: ClaimEnd,
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

/// The gossip topics the simulator carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Claim = 1,
    Certificate = 2,
    Heartbeat = 3,
}

#[derive(Clone)]
enum Msg {
    /// A claim envelope from a client.
    Client(Rc<Vec<u8>>),
    /// A gossiped envelope or certificate.
    Gossip {
        kind: Topic,
        raw: Rc<Vec<u8>>,
    },
    VoteRequest(Rc<pb::VoteRequest>),
    VoteResponse(Rc<pb::VoteResponse>),
    /// A pull of the receiver's certificate log from `cursor`.
    SyncRequest {
        cursor: u64,
    },
    SyncResponse {
        certs: Vec<Rc<Vec<u8>>>,
        next: u64,
        more: bool,
    },
}

impl Msg {
    fn tag(&self) -> u8 {
        match self {
            Msg::Client(_) => 1,
            Msg::Gossip { kind, .. } => 10u8.saturating_add(*kind as u8),
            Msg::VoteRequest(_) => 2,
            Msg::VoteResponse(_) => 3,
            Msg::SyncRequest { .. } => 4,
            Msg::SyncResponse { .. } => 5,
        }
    }

    /// Eight bytes naming the content, for the trace.
    fn trace_id(&self) -> [u8; 8] {
        let bytes: &[u8] = match self {
            Msg::Client(raw) | Msg::Gossip { raw, .. } => raw,
            Msg::VoteRequest(request) => &request.object,
            Msg::VoteResponse(response) => &response.vote,
            Msg::SyncRequest { cursor } | Msg::SyncResponse { next: cursor, .. } => return cursor.to_le_bytes(),
        };
        let mut out = [0u8; 8];
        out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
        out
    }

    fn bytes(&self) -> u64 {
        let n = match self {
            Msg::Client(raw) | Msg::Gossip { raw, .. } => raw.len(),
            Msg::VoteRequest(request) => request.encoded_len(),
            Msg::VoteResponse(response) => response.encoded_len(),
            Msg::SyncRequest { .. } => 16,
            Msg::SyncResponse { certs, .. } => certs.iter().map(|c| c.len()).sum::<usize>().saturating_add(16),
        };
        n as u64
    }
}

enum Event {
    Deliver { from: usize, to: usize, msg: Msg },
    Tick { node: usize, epoch: u32 },
    Sync { node: usize, epoch: u32 },
    Byzantine { node: usize },
    NewClaim,
    StreamClaim { stream: usize },
    Revoke,
    Sample,
    Rebalance,
    Submit { claim: usize },
    Fault(FaultEvent),
    EndFaults,
    Check,
}

/// What survives a crash: `locks.log`, the held claims and (with a durable ledger) the
/// certificate log.
#[derive(Default)]
struct Disk {
    locks: Vec<LockRecord>,
    held: BTreeMap<Digest, (Millis, Vec<u8>)>,
    certs: Vec<Rc<Vec<u8>>>,
}

impl Disk {
    /// The owner's latest own batch in `locks.log`.
    fn last_own_batch(&self) -> Option<Vec<u8>> {
        self.locks.iter().rev().find_map(|l| match l {
            LockRecord::OwnBatch { envelope } => Some(envelope.clone()),
            LockRecord::Vote { .. } => None,
        })
    }
}

struct Node {
    signer: SimKey,
    region: usize,
    up: bool,
    /// Bumped on every crash: timers from an earlier life are ignored.
    epoch: u32,
    skew_ms: i64,
    jump_ms: i64,
    /// The highest time this process's clock has shown (monotonic shell clock).
    clock_floor_ms: Millis,
    byzantine: bool,
    /// Failed for good: never restarted, and left out of liveness and convergence.
    failed: bool,
    /// Fail for good right after the next own batch is sent.
    fail_after_batch: bool,
    machine: Validator,
    book: CredentialBook,
    disk: Disk,
    /// The gossip pipeline's cache of envelopes that verified here.
    known: KnownSignatures,
    /// Position in each peer's certificate log pulled so far.
    cursors: BTreeMap<usize, u64>,
    /// When the next tick is due (a tick event for another time is stale).
    next_tick: Micros,
    sent_msgs: u64,
    sent_bytes: u64,
    recv_msgs: u64,
    recv_bytes: u64,
    /// Votes this node's shell saw leave, kept across restarts: an honest node never casts
    /// two at one position.
    votes_cast: BTreeMap<(Digest, u64), Digest>,
    /// Byzantine: genuine vote responses it received, to replay.
    replay_bank: Vec<Rc<pb::VoteResponse>>,
    /// Byzantine: claims of its region it received by gossip (most homed at other buckets),
    /// to fund in its own bucket.
    foreign_claims: Vec<Rc<Vec<u8>>>,
    /// Byzantine: the batches it crafted, by id, with the votes they drew (by voter).
    crafted: BTreeMap<Digest, Crafted>,
}

/// A batch a Byzantine owner crafted (its envelope), the votes it drew (by voter), and
/// which rule it breaks.
type Crafted = (Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>, &'static str);

struct ClaimRecord {
    id: Digest,
    raw: Rc<Vec<u8>>,
    slot: Digest,
    valid: bool,
    region: usize,
    home: Option<usize>,
    created_us: Micros,
    retries: u32,
    provisional_us: Option<Micros>,
    held: bool,
    certificate: Option<usize>,
    attestation: Digest,
    /// Refused for good at some node (no escrow left, credential revoked): the client stops.
    refused: Option<String>,
    /// When the issuer revoked its credential (the revocation's own timestamp).
    revoked_at: Option<Millis>,
}

struct CertMeta {
    record: CertRecord,
    raw: Rc<Vec<u8>>,
    stored_by: BTreeSet<usize>,
}

/// The whole simulated network.
pub struct World {
    cfg: Config,
    rng: Rng,
    now: Micros,
    queue: EventQueue<Event>,
    network: NetworkId,
    genesis: LoadedGenesis,
    setup: Setup,
    issuer: SimKey,
    operator: SimKey,
    /// Operator rebalances issued (every node holds them; restarts re-add them).
    rebalances: Vec<Verified>,
    /// The run's signature scheme and what envelopes are verified with.
    scheme: Scheme,
    check: Arc<dyn SignatureCheck>,
    dist_id: Digest,
    dist_total: u64,
    /// Every attestation issued (all nodes hold them: issued before the distribution opens).
    attestations: Vec<Verified>,
    nodes: Vec<Node>,
    key_index: BTreeMap<Key, usize>,
    /// Bucket digest → the node that owns it (node i owns bucket i).
    bucket_index: BTreeMap<Digest, usize>,
    region_members: Vec<Vec<usize>>,
    region_index: BTreeMap<String, usize>,
    registry: Registry,
    certs: Vec<CertMeta>,
    cert_by_fingerprint: BTreeMap<[u8; 32], usize>,
    /// Decoding cache of the oracle and the checks.
    known: KnownSignatures,
    oracle: Ledger,
    claims: Vec<ClaimRecord>,
    claim_index: BTreeMap<Digest, usize>,
    claimants: Vec<(SimKey, Digest)>,
    successors: Vec<Option<usize>>,
    snapshots: Vec<Snapshot>,
    failures: Vec<FailureRecord>,
    link: LinkModel,
    partition: Option<Partition>,
    faults_active: bool,
    byzantine: Option<usize>,
    trace: blake3::Hasher,
    events: u64,
    counters: BTreeMap<String, u64>,
    violation: Option<Violation>,
    converged_us: Option<Micros>,
    /// Stress measurements: samples, revocations issued, claimant keys drawn, budgets.
    samples: Vec<StressSample>,
    revocations: Vec<Verified>,
    keys_drawn: u64,
    allocations: Vec<u64>,
}

fn short(digest: &[u8]) -> String {
    hex::encode(digest.get(..6).unwrap_or_default())
}

impl World {
    /// Builds the network, the distribution and the fault schedule for `cfg`.
    pub fn new(cfg: Config) -> Result<Self, String> {
        if cfg.nodes == 0 || cfg.regions == 0 || cfg.regions > cfg.nodes || !cfg.nodes.is_multiple_of(cfg.regions) {
            return Err(format!(
                "need 1 <= regions <= nodes with every region the same size (got {} nodes, {} regions)",
                cfg.nodes, cfg.regions
            ));
        }
        let mut rng = Rng::new(cfg.seed);
        let per_region = cfg.nodes / cfg.regions;
        let names: Vec<String> = (0..cfg.regions).map(region_name).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Budget: ample headroom, so only bugs (never exhaustion) stop valid claims.
        let expected_claims = (cfg.rate_per_s * cfg.duration_us as f64 / 1e6).ceil() as u64;
        let per_node_claims = (expected_claims.saturating_mul(6) / cfg.nodes as u64).max(200);
        let per_region_amount = per_node_claims * AMOUNT * per_region as u64;
        let local = local_network(&name_refs, per_region, cfg.seed, per_region_amount, AMOUNT)
            .map_err(|e| format!("genesis: {e}"))?;
        let genesis = local.genesis;
        let network = genesis.network_id;
        let mut setup = genesis.setup();
        // The simulated genesis tightens the clock skew it tolerates, so that the clock
        // profile's jumps cross it (everything else is `Params::default()`).
        setup.params.max_clock_skew_ms = CLOCK_SKEW_MS;
        if !cfg.takeover {
            setup.params.takeover_after_ms = u64::MAX / 4;
        }
        let mut allocations = vec![per_region_amount; cfg.regions];
        if let Some(budget) = cfg.workload.as_ref().and_then(|w| w.allocations.clone()) {
            if budget.len() != cfg.regions {
                return Err(format!(
                    "the workload allocates to {} regions, not {}",
                    budget.len(),
                    cfg.regions
                ));
            }
            let total = budget
                .iter()
                .try_fold(0u64, |a, b| a.checked_add(*b))
                .ok_or("allocations overflow")?;
            if let Some((distribution, _)) = setup.distributions.first_mut() {
                distribution.allocations = names.iter().cloned().zip(budget.iter().copied()).collect();
                distribution.total = total;
            }
            allocations = budget;
        }
        let dist_id = wire::genesis_distribution_id(&network, 0);
        let dist_total = setup.distributions.first().map_or(0, |(d, _)| d.total);
        let oracle = setup.ledger(usize::MAX).map_err(|e| e.to_string())?;

        // local_network lists validators region by region; node i sits in region i % regions.
        let scheme = Scheme::new(cfg.signatures);
        let check = scheme.check();
        let mut signers: Vec<Option<SimKey>> = local.validators.into_iter().map(|k| Some(scheme.key(k))).collect();
        let mut region_members = vec![Vec::new(); cfg.regions];
        let byzantine = if cfg.profile.byzantine() && per_region >= 4 {
            Some(rng.below(cfg.nodes as u64) as usize)
        } else {
            None
        };
        let skew_max: u64 = if cfg.profile.clock() { 200 } else { 20 };
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let mut key_index = BTreeMap::new();
        for index in 0..cfg.nodes {
            let region = index % cfg.regions;
            let slot = region * per_region + index / cfg.regions;
            let signer = signers
                .get_mut(slot)
                .and_then(Option::take)
                .ok_or("genesis has fewer validators than nodes")?;
            let key = signer.public_key();
            key_index.insert(key, index);
            if let Some(members) = region_members.get_mut(region) {
                members.push(index);
            }
            let machine = Validator::with_check(&setup, Box::new(signer.clone()), &[], check.clone())
                .map_err(|e| e.to_string())?;
            let skew_ms = rng.between(0, 2 * skew_max) as i64 - skew_max as i64;
            nodes.push(Node {
                signer,
                region,
                up: true,
                epoch: 0,
                skew_ms,
                jump_ms: 0,
                clock_floor_ms: 0,
                byzantine: Some(index) == byzantine,
                failed: false,
                fail_after_batch: false,
                machine,
                book: Self::empty_book(&genesis),
                disk: Disk::default(),
                known: KnownSignatures::with_check(crate::core::validator::KNOWN_SIGNATURES_MAX, check.clone()),
                cursors: BTreeMap::new(),
                next_tick: 0,
                sent_msgs: 0,
                sent_bytes: 0,
                recv_msgs: 0,
                recv_bytes: 0,
                votes_cast: BTreeMap::new(),
                replay_bank: Vec::new(),
                foreign_claims: Vec::new(),
                crafted: BTreeMap::new(),
            });
        }
        let mut bucket_index = BTreeMap::new();
        let active = oracle.distribution(&dist_id).ok_or("no genesis distribution")?;
        for plan in active.buckets() {
            if let Some(node) = key_index.get(&plan.id.owner) {
                bucket_index.insert(plan.digest, *node);
            }
        }
        if bucket_index.len() != cfg.nodes {
            return Err(format!(
                "distribution has {} buckets for {} nodes",
                bucket_index.len(),
                cfg.nodes
            ));
        }
        let mut successors = vec![None; cfg.nodes];
        for (digest, node) in &bucket_index {
            if let Some(slot) = successors.get_mut(*node) {
                *slot = active
                    .successor(digest)
                    .and_then(|next| bucket_index.get(&next).copied());
            }
        }
        let region_index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let mut world = Self {
            rng,
            now: 0,
            queue: EventQueue::new(),
            network,
            setup,
            issuer: scheme.key(local.issuer),
            operator: scheme.key(local.operator),
            rebalances: Vec::new(),
            scheme,
            check: check.clone(),
            dist_id,
            dist_total,
            attestations: Vec::new(),
            nodes,
            key_index,
            bucket_index,
            region_members,
            region_index,
            registry: Registry::default(),
            certs: Vec::new(),
            cert_by_fingerprint: BTreeMap::new(),
            known: KnownSignatures::with_check(1 << 20, check),
            oracle,
            claims: Vec::new(),
            claim_index: BTreeMap::new(),
            claimants: Vec::new(),
            successors,
            snapshots: Vec::new(),
            failures: Vec::new(),
            link: cfg.profile.links(),
            partition: None,
            faults_active: true,
            byzantine,
            trace: blake3::Hasher::new(),
            events: 0,
            counters: BTreeMap::new(),
            violation: None,
            converged_us: None,
            samples: Vec::new(),
            revocations: Vec::new(),
            keys_drawn: 0,
            allocations,
            genesis,
            cfg,
        };
        world.trace.update(b"credence/sim/v2");
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
            world.queue.push(first_sync, Event::Sync { node, epoch: 0 });
            let first_tick = world.rng.below(crate::node::IDLE_TICK_MS.saturating_mul(1_000));
            if let Some(n) = world.nodes.get_mut(node) {
                n.next_tick = first_tick;
            }
            world.queue.push(first_tick, Event::Tick { node, epoch: 0 });
        }
        if let Some(node) = world.byzantine {
            world.queue.push(BYZANTINE_EVERY_US, Event::Byzantine { node });
        }
        let streams = world
            .cfg
            .workload
            .as_ref()
            .map(|w| w.streams.clone())
            .unwrap_or_default();
        if streams.is_empty() && world.cfg.rate_per_s > 0.0 {
            world.queue.push(0, Event::NewClaim);
        }
        for (stream, s) in streams.iter().enumerate() {
            world.queue.push(s.from_us, Event::StreamClaim { stream });
        }
        if let Some(w) = &world.cfg.workload {
            world.queue.push(0, Event::Sample);
            if let Some(r) = &w.revoke {
                world.queue.push(r.from_us, Event::Revoke);
            }
            if let Some(r) = &w.rebalance {
                world.queue.push(r.at_us, Event::Rebalance);
            }
        }
        Ok(world)
    }

    fn empty_book(genesis: &LoadedGenesis) -> CredentialBook {
        CredentialBook::new(
            CredentialRules {
                max_clock_skew_ms: CLOCK_SKEW_MS,
                operators: genesis.operators.clone(),
            },
            genesis.issuer_grants.iter().cloned(),
        )
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
        }
        if self.violation.is_none() && self.converged_us.is_none() {
            self.violation = Some(Violation::Liveness(self.stuck_reason()));
        }
        if self.cfg.workload.is_some() {
            let last = super::stress::sample(&self);
            self.samples.push(last);
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
    /// clock (the default, what the node's actor does) it never goes backwards within one
    /// process life.
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

    // ---------------------------------------------------------------- network

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
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
        let Some(mut delay) = self.link.delay(&mut self.rng, base) else {
            self.count("net: lost");
            return;
        };
        if let Some(slow) = self.cfg.workload.as_ref().and_then(|w| w.slow.clone())
            && (slow.from_us..slow.until_us).contains(&self.now)
        {
            let from_region = self.nodes.get(from).map(|n| n.region);
            if from_region == Some(slow.region) || to_region == slow.region {
                let jitter = self.rng.below(slow.jitter_us.max(1));
                delay = delay.saturating_add(slow.extra_us).saturating_add(jitter);
            }
        }
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

    fn gossip(&mut self, from: usize, region: Option<usize>, kind: Topic, raw: Vec<u8>) {
        let raw = Rc::new(raw);
        let targets: Vec<usize> = match region {
            Some(r) => self.region_members.get(r).cloned().unwrap_or_default(),
            None => (0..self.nodes.len()).collect(),
        };
        for to in targets {
            if to != from {
                self.send(from, to, Msg::Gossip { kind, raw: raw.clone() });
            }
        }
    }

    // ---------------------------------------------------------------- steps

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Tick { node, epoch } => {
                let due = self
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.up && n.epoch == epoch && n.next_tick == self.now);
                if due {
                    self.trace_event(20, node, node, [0; 8]);
                    let now = self.local_ms(node);
                    let out = match self.nodes.get_mut(node) {
                        Some(n) => n.machine.tick(now, &n.book),
                        None => return,
                    };
                    self.carry_out(node, out, None, true);
                    self.schedule_tick(node, true);
                }
            }
            Event::Sync { node, epoch } => {
                let live = self.nodes.get(node).is_some_and(|n| n.up && n.epoch == epoch);
                if live {
                    let peer = self.rng.below(self.nodes.len() as u64) as usize;
                    if peer != node {
                        self.request_sync(node, peer);
                    }
                    self.queue
                        .push(self.now.saturating_add(SYNC_INTERVAL_US), Event::Sync { node, epoch });
                }
            }
            Event::Byzantine { node } => {
                if self.faults_active {
                    self.byzantine_acts(node);
                    self.queue
                        .push(self.now.saturating_add(BYZANTINE_EVERY_US), Event::Byzantine { node });
                }
            }
            Event::NewClaim => self.new_claim(),
            Event::StreamClaim { stream } => self.stream_claim(stream),
            Event::Revoke => self.revoke(),
            Event::Sample => self.sample(),
            Event::Rebalance => self.rebalance(),
            Event::Submit { claim } => self.submit(claim),
            Event::Fault(fault) => self.apply_fault(fault),
            Event::EndFaults => self.end_faults(),
            Event::Check => {
                self.check_converged();
                if self.converged_us.is_none() {
                    self.queue
                        .push(self.now.saturating_add(CHECK_INTERVAL_US), Event::Check);
                }
            }
        }
    }

    /// Schedules the node's next tick: every `batch_min` while its state machine has work
    /// waiting, every `IDLE_TICK_MS` otherwise (the node's actor). `fresh`: the tick that was
    /// due just ran.
    fn schedule_tick(&mut self, node: usize, fresh: bool) {
        let busy_us = self.setup.params.batch_min_ms.max(1).saturating_mul(1_000);
        let idle_us = crate::node::IDLE_TICK_MS
            .max(self.setup.params.batch_min_ms)
            .saturating_mul(1_000);
        let now = self.now;
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if !n.up {
            return;
        }
        let every = if n.machine.is_busy() { busy_us } else { idle_us };
        let at = now.saturating_add(every);
        if fresh || at < n.next_tick {
            n.next_tick = at;
            let epoch = n.epoch;
            self.queue.push(at, Event::Tick { node, epoch });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let up = self.nodes.get(to).is_some_and(|n| n.up);
        let blocked = from != CLIENT && self.partition.as_ref().is_some_and(|p| p.blocks(from, to));
        if blocked {
            self.count("net: cut by partition");
        }
        if !up || blocked {
            return;
        }
        self.trace_event(msg.tag(), from, to, msg.trace_id());
        let bytes = msg.bytes();
        if let Some(n) = self.nodes.get_mut(to) {
            n.recv_msgs = n.recv_msgs.saturating_add(1);
            n.recv_bytes = n.recv_bytes.saturating_add(bytes);
        }
        let now = self.local_ms(to);
        let network = self.network;
        let byzantine = self.nodes.get(to).is_some_and(|n| n.byzantine);
        match msg {
            Msg::Client(raw)
            | Msg::Gossip {
                kind: Topic::Claim,
                raw,
            } => {
                let from_client = from == CLIENT;
                let Some(n) = self.nodes.get_mut(to) else { return };
                // The gossip pipeline verifies before anything reaches the actor.
                let Ok(claim) = envelope::verify_known(&network, &raw, &mut n.known) else {
                    self.count("shell: claim refused by the pipeline");
                    return;
                };
                if byzantine && !from_client {
                    n.foreign_claims.push(raw.clone());
                }
                let result = n.machine.step(
                    now,
                    &n.book,
                    Input::Claim {
                        claim: &claim,
                        from_client,
                    },
                );
                match result {
                    Ok(out) => self.carry_out(to, out, None, true),
                    Err(e) => {
                        self.count("validator: claim refused");
                        self.note_refusal(&raw, &e);
                    }
                }
            }
            Msg::Gossip {
                kind: Topic::Heartbeat,
                raw,
            } => {
                if !self.cfg.heartbeats {
                    return;
                }
                let Some(n) = self.nodes.get_mut(to) else { return };
                let Ok(heartbeat) = envelope::verify_known(&network, &raw, &mut n.known) else {
                    self.count("shell: heartbeat refused by the pipeline");
                    return;
                };
                match n.machine.step(now, &n.book, Input::Heartbeat { heartbeat: &heartbeat }) {
                    Ok(out) => self.carry_out(to, out, None, true),
                    Err(_) => self.count("validator: heartbeat refused"),
                }
            }
            Msg::Gossip { raw, .. } => self.certificate_arrives(to, &raw, now),
            Msg::VoteRequest(request) => {
                let Some(n) = self.nodes.get_mut(to) else { return };
                match n.machine.step(now, &n.book, Input::VoteRequest { request: &request }) {
                    Ok(out) => self.carry_out(to, out, Some(from), true),
                    Err(e) => {
                        self.count("validator: vote request refused");
                        self.note_refusal(&request.object, &e);
                    }
                }
            }
            Msg::VoteResponse(response) => {
                if response.vote.is_empty() && !response.refusal.is_empty() {
                    self.count("voter refused");
                    if response.refusal.contains("ahead of this node's clock") {
                        self.count("voter refused: timestamp ahead");
                    }
                    let words: Vec<&str> = response
                        .refusal
                        .split_whitespace()
                        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                        .take(5)
                        .collect();
                    self.count(&format!("voter refused: {}", words.join(" ")));
                }
                if byzantine && !response.vote.is_empty() {
                    self.byzantine_collects(to, &response.vote);
                }
                let Some(n) = self.nodes.get_mut(to) else { return };
                if n.byzantine && !response.vote.is_empty() && n.replay_bank.len() < 256 {
                    n.replay_bank.push(response.clone());
                }
                match n
                    .machine
                    .step(now, &n.book, Input::VoteResponse { response: &response })
                {
                    Ok(out) => self.carry_out(to, out, None, true),
                    Err(_) => self.count("validator: vote response refused"),
                }
            }
            Msg::SyncRequest { cursor } => {
                let Some(n) = self.nodes.get(to) else { return };
                let start = usize::try_from(cursor).unwrap_or(usize::MAX).min(n.disk.certs.len());
                let end = start.saturating_add(SYNC_PAGE_MAX).min(n.disk.certs.len());
                let certs: Vec<Rc<Vec<u8>>> = n.disk.certs.get(start..end).unwrap_or_default().to_vec();
                let more = end < n.disk.certs.len();
                self.send(
                    to,
                    from,
                    Msg::SyncResponse {
                        certs,
                        next: end as u64,
                        more,
                    },
                );
            }
            Msg::SyncResponse { certs, next, more } => {
                for raw in certs {
                    self.certificate_arrives(to, &raw, now);
                }
                if let Some(n) = self.nodes.get_mut(to) {
                    n.cursors.insert(from, next);
                }
                if more {
                    self.send(to, from, Msg::SyncRequest { cursor: next });
                }
            }
        }
        self.schedule_tick(to, false);
    }

    /// A node refused a claim for good (no escrow left, credential revoked): the workload's
    /// client stops and liveness does not wait for it.
    fn note_refusal(&mut self, raw: &[u8], error: &crate::core::validator::ValidatorError) {
        if self.cfg.workload.is_none() {
            return;
        }
        let crate::core::validator::ValidatorError::Refused(reason) = error else {
            return;
        };
        if !super::stress::final_refusal(reason) {
            return;
        }
        let Some(id) = envelope::object_id(&self.network, raw) else {
            return;
        };
        if let Some(record) = self.claim_index.get(&id.0).and_then(|i| self.claims.get_mut(*i))
            && record.refused.is_none()
        {
            record.refused = Some(super::stress::reason_name(&reason.to_string()));
        }
    }

    fn certificate_arrives(&mut self, to: usize, raw: &[u8], now: Millis) {
        let Some(n) = self.nodes.get_mut(to) else { return };
        match n.machine.step(now, &n.book, Input::Certificate { raw }) {
            Ok(out) => self.carry_out(to, out, None, true),
            Err(_) => self.count("validator: certificate refused"),
        }
    }

    fn request_sync(&mut self, node: usize, peer: usize) {
        let cursor = self
            .nodes
            .get(node)
            .and_then(|n| n.cursors.get(&peer).copied())
            .unwrap_or(0);
        self.send(node, peer, Msg::SyncRequest { cursor });
    }

    /// Carries out a state machine's outputs as the node's actor does: persist everything to
    /// the node's disk, then send, then (`then_persisted`) step `Persisted` and carry that out.
    fn carry_out(&mut self, node: usize, out: Outputs, reply_to: Option<usize>, then_persisted: bool) {
        let honest = self.nodes.get(node).is_some_and(|n| !n.byzantine);
        // Persist.
        let mut own_batches = Vec::new();
        for lock in &out.locks {
            if let LockRecord::Vote { bucket, seq, object_id } = lock {
                self.note_vote(node, honest, *bucket, *seq, *object_id);
            }
            if let LockRecord::OwnBatch { envelope } = lock {
                own_batches.push(envelope.clone());
            }
        }
        let Some(n) = self.nodes.get_mut(node) else { return };
        n.disk.locks.extend(out.locks);
        for change in out.held {
            match change {
                HeldChange::Hold {
                    id,
                    received_at,
                    envelope,
                } => {
                    n.disk.held.insert(id, (received_at, envelope));
                    if let Some(record) = self.claim_index.get(&id).and_then(|i| self.claims.get_mut(*i))
                        && record.home != Some(node)
                    {
                        record.held = true;
                    }
                }
                HeldChange::Release(id) => {
                    n.disk.held.remove(&id);
                }
            }
        }
        let stored: Vec<Rc<Vec<u8>>> = out.store_certificates.into_iter().map(Rc::new).collect();
        if let Some(n) = self.nodes.get_mut(node) {
            n.disk.certs.extend(stored.iter().cloned());
        }
        for raw in &stored {
            self.on_stored(node, raw);
        }
        if !stored.is_empty() {
            self.check_node(node);
        }
        for envelope in &own_batches {
            self.own_batch_sent(node, envelope);
        }
        // Send.
        if let (Some(reply), Some(to)) = (out.vote_reply, reply_to) {
            if honest && !reply.vote.is_empty() {
                self.check_vote_leaves(node, &reply.vote);
            }
            self.send(node, to, Msg::VoteResponse(Rc::new(reply)));
        }
        let mut requests = out.vote_requests;
        if !honest && self.faults_active {
            // The Byzantine owner withholds its honest batches: its chain moves only by the
            // batches it crafts (it may stall its own bucket; its claims are exempt).
            let network = self.network;
            requests.retain(|(_, request)| {
                envelope::decode_vouched(&network, &request.object, envelope::Voucher::Known)
                    .is_ok_and(|object| object.kind != Kind::Batch)
            });
        }
        for (voter, request) in requests {
            if let Some(to) = self.key_index.get(&voter).copied() {
                self.send(node, to, Msg::VoteRequest(Rc::new(request)));
            }
        }
        for (region, raw) in out.claims_to_publish {
            let region = self.region_index.get(&region).copied();
            if region.is_some() {
                self.gossip(node, region, Topic::Claim, raw);
            }
        }
        // Certificates go to the node's own region; the others pull them.
        let own_region = self.nodes.get(node).map(|n| n.region);
        for raw in out.certificates_to_publish {
            self.gossip(node, own_region, Topic::Certificate, raw);
        }
        if let Some(raw) = out.heartbeat
            && self.cfg.heartbeats
        {
            self.gossip(node, None, Topic::Heartbeat, raw);
        }
        for _ in out.disconnect {
            self.count("validator: a suspected peer's connections closed");
        }
        for key in out.sync_from {
            if let Some(peer) = self.key_index.get(&key).copied() {
                self.request_sync(node, peer);
            }
        }
        if self.nodes.get(node).is_some_and(|n| n.fail_after_batch) && !own_batches.is_empty() {
            self.fail_for_good(node);
            return;
        }
        if then_persisted {
            let now = self.local_ms(node);
            let Some(n) = self.nodes.get_mut(node) else { return };
            if !n.up {
                return;
            }
            if let Ok(more) = n.machine.step(now, &n.book, Input::Persisted) {
                if !more.locks.is_empty() {
                    self.fail(Violation::NodeState {
                        node,
                        detail: "counting its own votes produced new locks".into(),
                    });
                }
                self.carry_out(node, more, None, false);
            }
        }
    }

    /// A vote lock reached an honest node's disk: never two objects at one position.
    fn note_vote(&mut self, node: usize, honest: bool, bucket: Digest, seq: u64, object_id: Digest) {
        let Some(n) = self.nodes.get_mut(node) else { return };
        let previous = n.votes_cast.insert((bucket, seq), object_id);
        if honest && previous.is_some_and(|p| p != object_id) {
            let bucket = self.bucket_index.get(&bucket).copied().unwrap_or(usize::MAX);
            self.fail(Violation::DoubleVote { node, bucket, seq });
        }
    }

    /// The ordering contract: a vote leaves an honest node only with its lock on its disk.
    fn check_vote_leaves(&mut self, node: usize, raw: &[u8]) {
        let Ok(verified) = envelope::decode_vouched(&self.network, raw, envelope::Voucher::Known) else {
            return;
        };
        let Ok(vote) = wire::vote(&verified) else { return };
        let Some(n) = self.nodes.get(node) else { return };
        let honest = !n.byzantine;
        let durable = n.disk.locks.iter().any(|lock| {
            *lock
                == LockRecord::Vote {
                    bucket: vote.bucket,
                    seq: vote.seq,
                    object_id: vote.object_id,
                }
        });
        if !durable {
            self.fail(Violation::NodeState {
                node,
                detail: format!(
                    "a vote for {} at seq {} left before its lock was durable",
                    short(&vote.object_id),
                    vote.seq
                ),
            });
        }
        self.note_vote(node, honest, vote.bucket, vote.seq, vote.object_id);
    }

    /// An owner's batch reached its disk and goes out: its claims are provisional.
    fn own_batch_sent(&mut self, node: usize, envelope: &[u8]) {
        let Some((_, claims)) = self.decode_batch(envelope) else {
            return;
        };
        for id in claims {
            if let Some(record) = self.claim_index.get(&id).and_then(|i| self.claims.get_mut(*i))
                && record.provisional_us.is_none()
            {
                record.provisional_us = Some(self.now);
            }
        }
        let _ = node;
    }

    /// A batch envelope's seq and the ids of the claims in it (no signature check).
    fn decode_batch(&self, envelope: &[u8]) -> Option<(u64, Vec<Digest>)> {
        let signed = envelope::decode_vouched(&self.network, envelope, envelope::Voucher::Known).ok()?;
        let body = pb::Batch::decode(signed.body.as_slice()).ok()?;
        let claims = body
            .entries
            .iter()
            .filter_map(|entry| match &entry.entry {
                Some(pb::batch_entry::Entry::Claim(raw)) => envelope::object_id(&self.network, raw).map(|id| id.0),
                _ => None,
            })
            .collect();
        Some((body.seq, claims))
    }

    /// A node stored a certificate: the registry checks its position and slots, the oracle
    /// applies it, and its global status is tracked.
    fn on_stored(&mut self, node: usize, raw: &Rc<Vec<u8>>) {
        let fingerprint = *blake3::hash(raw).as_bytes();
        let index = match self.cert_by_fingerprint.get(&fingerprint) {
            Some(index) => *index,
            None => match self.register(node, raw) {
                Some(index) => {
                    self.cert_by_fingerprint.insert(fingerprint, index);
                    index
                }
                None => return,
            },
        };
        let regions = self.region_members.clone();
        let (num, den) = self.setup.params.fault_model.threshold();
        let now = self.now;
        let Some(meta) = self.certs.get_mut(index) else { return };
        meta.stored_by.insert(node);
        if meta.record.global_us.is_none() {
            let global = regions.iter().all(|members| {
                let stored = members.iter().filter(|m| meta.stored_by.contains(m)).count();
                crate::core::quorum::above(stored as u64, members.len() as u64, num, den)
            });
            if global {
                meta.record.global_us = Some(now);
            }
        }
    }

    fn register(&mut self, node: usize, raw: &Rc<Vec<u8>>) -> Option<usize> {
        let cert = match wire::certificate(&self.network, raw, &mut self.known) {
            Ok(cert) => cert,
            Err(e) => {
                self.fail(Violation::NodeState {
                    node,
                    detail: format!("stored a certificate that does not verify: {e}"),
                });
                return None;
            }
        };
        let bucket_digest = cert.object.bucket().digest();
        let bucket = self.bucket_index.get(&bucket_digest).copied().unwrap_or(usize::MAX);
        let seq = cert.object.seq().unwrap_or(u64::MAX);
        let (proposer_key, freeze, claims) = match &cert.object {
            CertifiedObject::Batch(batch) => (batch.signer, false, batch.claims().cloned().collect::<Vec<_>>()),
            CertifiedObject::Freeze(freeze) => (freeze.signer, true, Vec::new()),
        };
        let expected_prev = match seq.checked_sub(1) {
            None => Some(crate::core::escrow::ZERO_DIGEST),
            Some(before) => self.registry.object_at(bucket, before).copied(),
        };
        if let CertifiedObject::Batch(batch) = &cert.object
            && let Some(before) = &expected_prev
            && *before != batch.prev
        {
            self.fail(Violation::NodeState {
                node,
                detail: format!(
                    "a certificate at (bucket {bucket}, seq {seq}) breaks the hash chain: prev {} is not {}",
                    short(&batch.prev),
                    short(before)
                ),
            });
            return None;
        }
        let slots: Vec<Digest> = claims.iter().map(|c| c.slot()).collect();
        if let Err(violation) = self.registry.register(bucket, seq, cert.object.id(), slots) {
            self.fail(violation);
            return None;
        }
        if let Err(e) = self.oracle.apply(cert) {
            self.fail(Violation::NodeState {
                node,
                detail: format!("a certificate formed that the ledger refuses: {e}"),
            });
            return None;
        }
        let total = self.dist_total;
        let report = match self.nodes.first() {
            Some(n) => self.oracle.liquidity_report(&self.dist_id, &Credentials(&n.book)),
            None => return None,
        };
        match report {
            Ok(report) => {
                if let Err(violation) = check_liquidity(total, &report) {
                    self.fail(violation);
                }
            }
            Err(e) => self.fail(Violation::NodeState {
                node: usize::MAX,
                detail: format!("oracle liquidity: {e}"),
            }),
        }
        let index = self.certs.len();
        for claim in &claims {
            if let Some(record) = self.claim_index.get(&claim.id).and_then(|i| self.claims.get_mut(*i)) {
                record.certificate = Some(index);
            }
        }
        let proposer = self.key_index.get(&proposer_key).copied().unwrap_or(usize::MAX);
        if freeze && self.cfg.script.is_none() && self.cfg.profile == Profile::None {
            // No fault was injected: nobody had a reason to suspect anyone.
            self.fail(Violation::NodeState {
                node: proposer,
                detail: format!("froze bucket {bucket} although no fault was injected"),
            });
        }
        self.certs.push(CertMeta {
            record: CertRecord {
                bucket,
                seq,
                freeze,
                proposer,
                collector: node,
                formed_us: self.now,
                global_us: None,
            },
            raw: raw.clone(),
            stored_by: BTreeSet::new(),
        });
        Some(index)
    }

    /// One node's ledger keeps the liquidity rules after it stored certificates.
    fn check_node(&mut self, node: usize) {
        if self.nodes.len() > FULL_NODE_CHECKS_MAX {
            return;
        }
        let total = self.dist_total;
        let Some(n) = self.nodes.get(node) else { return };
        let checked = n
            .machine
            .ledger()
            .liquidity_report(&self.dist_id, &Credentials(&n.book))
            .map_err(|e| Violation::NodeState {
                node,
                detail: e.to_string(),
            })
            .and_then(|report| check_liquidity(total, &report));
        if let Err(violation) = checked {
            self.fail(violation);
        }
    }

    // ---------------------------------------------------------------- clients

    fn new_claim(&mut self) {
        if self.now >= self.cfg.duration_us {
            return;
        }
        let roll = self.rng.below(100);
        let region = self.rng.below(self.cfg.regions as u64) as usize;
        let created_ms = (T0_MS + self.now / 1_000).saturating_sub(self.rng.below(20));
        let (claimant, attestation, valid) = if roll < 8 && !self.claimants.is_empty() {
            // The same claimant again, with a new claim: at most one may be paid.
            let pick = self.rng.below(self.claimants.len() as u64) as usize;
            match self.claimants.get(pick) {
                Some((claimant, attestation)) => (claimant.clone(), *attestation, true),
                None => return,
            }
        } else {
            let index = self.claimants.len() as u64;
            let secret = blake3::hash(
                &[
                    b"sim/claimant".as_slice(),
                    &self.cfg.seed.to_le_bytes(),
                    &index.to_le_bytes(),
                ]
                .concat(),
            );
            let claimant = self.scheme.key(SigningKey::from_bytes(secret.as_bytes()));
            let attestation = self.issue(&claimant);
            if roll < 14 && !self.claimants.is_empty() {
                // Someone else's credential: objectively invalid, must be rejected.
                let pick = self.rng.below(self.claimants.len() as u64) as usize;
                let other = self.claimants.get(pick).map(|(_, a)| *a).unwrap_or(attestation);
                (claimant, other, false)
            } else {
                self.claimants.push((claimant.clone(), attestation));
                (claimant, attestation, true)
            }
        };
        self.push_claim(&claimant, attestation, valid, region, created_ms);
        let gap_us = self.rng.exponential(1e6 / self.cfg.rate_per_s.max(1e-3)).max(1.0) as Micros;
        self.queue.push(self.now.saturating_add(gap_us), Event::NewClaim);
    }

    /// Seals a claim of `claimant` with `attestation`, records it and submits it at once to a
    /// node of `region`.
    fn push_claim(&mut self, claimant: &SimKey, attestation: Digest, valid: bool, region: usize, created_ms: Millis) {
        let claimant_key = claimant.public_key();
        let body = pb::Claim {
            distribution_id: self.dist_id.to_vec(),
            claimant: claimant_key.to_vec(),
            attestation_id: attestation.to_vec(),
            amount: AMOUNT,
            recipient: claimant_key.to_vec(),
            created_at: created_ms,
            nonce: self.claims.len() as u64,
        };
        let (raw, id) = seal_with(&self.network, claimant, Kind::Claim, body.encode_to_vec());
        let home = match self.oracle.route(&self.dist_id, &claimant_key) {
            Some(crate::core::escrow::Route::Live { bucket, .. }) => self.bucket_index.get(&bucket).copied(),
            _ => None,
        };
        let index = self.claims.len();
        self.claim_index.insert(id.0, index);
        self.claims.push(ClaimRecord {
            id: id.0,
            raw: Rc::new(raw),
            slot: slot_of(&self.dist_id, &claimant_key),
            valid,
            region,
            home,
            created_us: self.now,
            retries: 0,
            provisional_us: None,
            held: false,
            certificate: None,
            attestation,
            refused: None,
            revoked_at: None,
        });
        self.queue.push(self.now, Event::Submit { claim: index });
    }

    /// The region of the bucket a claimant's claims are funded from (by the certified state).
    fn home_region_of(&self, claimant: &SimKey) -> Option<usize> {
        match self.oracle.route(&self.dist_id, &claimant.public_key()) {
            Some(crate::core::escrow::Route::Live { bucket, .. }) => {
                let node = self.bucket_index.get(&bucket)?;
                self.nodes.get(*node).map(|n| n.region)
            }
            _ => None,
        }
    }

    /// One claim of a workload stream: a new claimant homed in the stream's region (any home
    /// when that region holds no escrow, as in the pooled baseline), a fresh credential, one
    /// claim submitted to a node of the region.
    fn stream_claim(&mut self, stream: usize) {
        let Some(s) = self.cfg.workload.as_ref().and_then(|w| w.streams.get(stream)).cloned() else {
            return;
        };
        if self.now >= s.until_us || self.now >= self.cfg.duration_us {
            return;
        }
        let homed_here = self.allocations.get(s.region).is_some_and(|a| *a > 0);
        let mut chosen = None;
        for _ in 0..super::stress::HOME_ATTEMPTS_MAX {
            self.keys_drawn = self.keys_drawn.wrapping_add(1);
            let secret = blake3::hash(
                &[
                    b"sim/stress-claimant".as_slice(),
                    &self.cfg.seed.to_le_bytes(),
                    &self.keys_drawn.to_le_bytes(),
                ]
                .concat(),
            );
            let claimant = self.scheme.key(SigningKey::from_bytes(secret.as_bytes()));
            if !homed_here || self.home_region_of(&claimant) == Some(s.region) {
                chosen = Some(claimant);
                break;
            }
        }
        if let Some(claimant) = chosen {
            let attestation = self.issue(&claimant);
            self.claimants.push((claimant.clone(), attestation));
            let created_ms = T0_MS + self.now / 1_000;
            self.push_claim(&claimant, attestation, true, s.region, created_ms);
        } else {
            self.count("workload: no claimant homed in the stream's region");
        }
        let gap_us = self.rng.exponential(1e6 / s.rate_per_s.max(1e-3)).max(1.0) as Micros;
        self.queue
            .push(self.now.saturating_add(gap_us), Event::StreamClaim { stream });
    }

    /// The issuer revokes the credential of one claim in flight. The revocation is dated
    /// `lag_ms` before it reaches the nodes (truth arriving late): every node applies it now.
    fn revoke(&mut self) {
        let Some(plan) = self.cfg.workload.as_ref().and_then(|w| w.revoke.clone()) else {
            return;
        };
        if self.now >= plan.until_us {
            return;
        }
        self.queue.push(self.now.saturating_add(plan.every_us), Event::Revoke);
        let recent: Vec<usize> = self
            .claims
            .iter()
            .enumerate()
            .filter(|(_, c)| c.valid && c.revoked_at.is_none())
            .filter(|(_, c)| c.created_us.saturating_add(plan.lag_ms.saturating_mul(2_000)) >= self.now)
            .map(|(i, _)| i)
            .collect();
        let Some(index) = recent.get(self.rng.below(recent.len().max(1) as u64) as usize).copied() else {
            return;
        };
        let Some(attestation) = self.claims.get(index).map(|c| c.attestation) else {
            return;
        };
        let revoked_at = (T0_MS + self.now / 1_000).saturating_sub(plan.lag_ms);
        let body = pb::Revocation {
            issuer: self.issuer.public_key().to_vec(),
            attestation_id: attestation.to_vec(),
            revoked_at,
            reason: "stress: revoked while its claim is in flight".into(),
        };
        let (raw, _) = seal_with(&self.network, &self.issuer, Kind::Revocation, body.encode_to_vec());
        let Ok(verified) = envelope::decode(&self.network, &raw).and_then(envelope::Unverified::verify) else {
            return;
        };
        let now_ms = T0_MS + self.now / 1_000;
        for n in &mut self.nodes {
            let _ = n.book.apply(now_ms, &verified);
        }
        self.revocations.push(verified);
        if let Some(c) = self.claims.get_mut(index) {
            c.revoked_at = Some(revoked_at);
        }
        self.count("workload: credential revoked");
    }

    /// The operator moves escrow between regions: a signed rebalance every node applies now
    /// (the operator's object, as the node takes it from its credential log).
    fn rebalance(&mut self) {
        let Some(plan) = self.cfg.workload.as_ref().and_then(|w| w.rebalance.clone()) else {
            return;
        };
        let body = pb::Rebalance {
            operator: self.operator.public_key().to_vec(),
            distribution_id: self.dist_id.to_vec(),
            from_region: region_name(plan.from_region),
            to_region: region_name(plan.to_region),
            amount: plan.amount,
            nonce: 1,
        };
        let (raw, _) = seal_with(&self.network, &self.operator, Kind::Rebalance, body.encode_to_vec());
        let Ok(verified) = envelope::decode(&self.network, &raw).and_then(envelope::Unverified::verify) else {
            return;
        };
        let operators = self.genesis.operators.clone();
        for n in self.nodes.iter_mut().filter(|n| n.up) {
            if n.machine.add_rebalance(&verified, &operators).is_err() {
                self.counters
                    .entry("workload: rebalance refused".into())
                    .and_modify(|c| *c = c.saturating_add(1))
                    .or_insert(1);
            }
        }
        self.rebalances.push(verified);
        self.count("workload: rebalance issued");
    }

    /// Samples liquidity per region (certified, from the oracle; pending from each owner), each
    /// region's view age as the others see it, suspicion and quorum modes.
    fn sample(&mut self) {
        let Some(every) = self.cfg.workload.as_ref().map(|w| w.sample_every_us) else {
            return;
        };
        let end = self.cfg.duration_us.saturating_add(self.cfg.tail_us);
        if self.now < end {
            self.queue
                .push(self.now.saturating_add(every.max(1_000)), Event::Sample);
        }
        let sample = super::stress::sample(self);
        self.samples.push(sample);
    }

    /// Issues an attestation for `claimant` and hands it to every node (attestations are issued
    /// before the distribution opens, so every node knows them).
    fn issue(&mut self, claimant: &SimKey) -> Digest {
        let body = pb::Attestation {
            issuer: self.issuer.public_key().to_vec(),
            subject: claimant.public_key().to_vec(),
            schema: DEMO_SCHEMA.into(),
            data: vec![],
            issued_at: T0_MS.saturating_sub(3_600_000),
            expires_at: 0,
            nonce: self.attestations.len() as u64,
        };
        let (raw, id) = seal_with(&self.network, &self.issuer, Kind::Attestation, body.encode_to_vec());
        let Ok(verified) = envelope::decode(&self.network, &raw).and_then(|u| self.known.verify(u)) else {
            return id.0;
        };
        for n in &mut self.nodes {
            let _ = n.book.apply(T0_MS, &verified);
        }
        self.attestations.push(verified);
        id.0
    }

    fn submit(&mut self, index: usize) {
        let Some(record) = self.claims.get(index) else {
            return;
        };
        if self.registry.is_funded(&record.slot) || record.refused.is_some() {
            return;
        }
        let (raw, valid, region, retries) = (record.raw.clone(), record.valid, record.region, record.retries);
        let members = self.region_members.get(region).cloned().unwrap_or_default();
        let entry = members
            .get(self.rng.below(members.len() as u64) as usize)
            .copied()
            .unwrap_or(0);
        self.send(CLIENT, entry, Msg::Client(raw));
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

    // ---------------------------------------------------------------- Byzantine

    /// A Byzantine validator's acts on top of its honest state machine: a forged certificate,
    /// a replayed vote, and as an owner batches that break a voting rule (see
    /// [`World::byzantine_batch`]).
    fn byzantine_acts(&mut self, node: usize) {
        if !self.nodes.get(node).is_some_and(|n| n.up) {
            return;
        }
        let roll = self.rng.below(7);
        match roll {
            0 => {
                let Some(raw) = self
                    .certs
                    .get(self.rng.below(self.certs.len().max(1) as u64) as usize)
                    .map(|c| c.raw.clone())
                else {
                    return;
                };
                let Ok(mut cert) = pb::Certificate::decode(raw.as_slice()) else {
                    return;
                };
                let Some(vote) = cert.votes.first_mut() else { return };
                let Ok(mut signed) = pb::Signed::decode(vote.as_slice()) else {
                    return;
                };
                if let Some(b) = signed.signature.first_mut() {
                    *b ^= 0x40;
                }
                // A different position too, so it is no byte-identical copy.
                *vote = signed.encode_to_vec();
                self.count("byzantine: forged certificate");
                self.gossip(node, None, Topic::Certificate, cert.encode_to_vec());
            }
            1 => {
                let Some(response) = self.nodes.get(node).and_then(|n| {
                    let len = n.replay_bank.len();
                    (len > 0)
                        .then(|| n.replay_bank.get(self.now as usize % len).cloned())
                        .flatten()
                }) else {
                    return;
                };
                let region = self.nodes.get(node).map_or(0, |n| n.region);
                let members = self.region_members.get(region).cloned().unwrap_or_default();
                self.count("byzantine: replayed a vote");
                for to in members {
                    if to != node {
                        self.send(node, to, Msg::VoteResponse(response.clone()));
                    }
                }
            }
            _ => self.byzantine_batch(node, roll),
        }
    }

    /// Batches of the Byzantine owner's own bucket built to break a voting rule: `kind` 2
    /// equivocates (one batch to a single voter, a variant at the same seq to all), 3 chains
    /// to a wrong `prev`, 4 funds a claim homed elsewhere, 5 funds one claim twice in one
    /// batch, 6 understates the chain's running total (spending more than it books).
    fn byzantine_batch(&mut self, node: usize, kind: u64) {
        let Some(n) = self.nodes.get(node) else { return };
        let Some(last) = n.disk.last_own_batch() else {
            return;
        };
        let Ok(signed) = envelope::decode_vouched(&self.network, &last, envelope::Voucher::Known) else {
            return;
        };
        let Ok(mut body) = pb::Batch::decode(signed.body.as_slice()) else {
            return;
        };
        let bucket = self.bucket_digest_of(node);
        let ledger = n.machine.ledger();
        let next = ledger.next_seq(&bucket).unwrap_or(0);
        let prev = ledger.last_batch_id(&bucket).unwrap_or([0; 32]);
        let total = ledger.chain_total(&bucket).unwrap_or(0);
        let region = n.region;
        let members: Vec<usize> = self
            .region_members
            .get(region)
            .map(|m| m.iter().copied().filter(|to| *to != node).collect())
            .unwrap_or_default();
        body.seq = next;
        body.prev = prev.to_vec();
        body.timestamp = self.now / 1_000 + T0_MS;
        // The claims of its last own batch, at the chain's next position.
        let claims = body
            .entries
            .iter()
            .filter(|e| matches!(e.entry, Some(pb::batch_entry::Entry::Claim(_))))
            .count() as u64;
        let only_claims = claims > 0 && claims == body.entries.len() as u64;
        body.total_after = total.saturating_add(claims.saturating_mul(AMOUNT));
        let (what, sends) = match kind {
            2 if only_claims => {
                let mut variant = body.clone();
                variant.timestamp = variant.timestamp.saturating_add(1);
                let first = members.first().copied().into_iter().collect::<Vec<_>>();
                (
                    "byzantine: equivocated as an owner",
                    vec![(body, first), (variant, members)],
                )
            }
            3 if only_claims => {
                body.prev = vec![0xEE; 32];
                ("byzantine: batch with a wrong prev", vec![(body, members)])
            }
            4 => {
                let Some(claim) = n.foreign_claims.last().cloned() else {
                    return;
                };
                body.entries = vec![pb::BatchEntry {
                    entry: Some(pb::batch_entry::Entry::Claim(claim.to_vec())),
                }];
                body.total_after = total.saturating_add(AMOUNT);
                ("byzantine: funded a claim homed elsewhere", vec![(body, members)])
            }
            5 if only_claims => {
                let Some(first) = body.entries.first().cloned() else {
                    return;
                };
                body.entries.push(first);
                body.total_after = body.total_after.saturating_add(AMOUNT);
                ("byzantine: funded one claim twice in a batch", vec![(body, members)])
            }
            6 if only_claims => {
                body.total_after = total;
                ("byzantine: understated the running total", vec![(body, members)])
            }
            _ => return,
        };
        let attestations: Vec<Vec<u8>> = self.attestations.iter().rev().take(32).map(|a| a.raw.clone()).collect();
        self.count(what);
        let network = self.network;
        for (body, targets) in sends {
            let Some(signer) = self.nodes.get(node).map(|n| n.signer.clone()) else {
                return;
            };
            let (raw, _) = seal_with(&network, &signer, Kind::Batch, body.encode_to_vec());
            // Votes name the batch by its own id (a digest of its fields), not the envelope's.
            let Some(id) = envelope::decode_vouched(&network, &raw, envelope::Voucher::Known)
                .ok()
                .and_then(|v| wire::batch(&network, &v, &mut self.known).ok())
                .map(|(batch, _)| batch.id)
            else {
                return;
            };
            if let Some(n) = self.nodes.get_mut(node) {
                if n.crafted.len() >= 64 {
                    n.crafted.pop_first();
                }
                n.crafted.insert(id, (raw.clone(), BTreeMap::new(), what));
            }
            let request = Rc::new(pb::VoteRequest {
                object: raw,
                attestations: attestations.clone(),
                certificates: Vec::new(),
            });
            for to in targets {
                self.send(node, to, Msg::VoteRequest(request.clone()));
            }
        }
    }

    /// A vote for one of the Byzantine owner's crafted batches: with its own vote added, a
    /// quorum of them is a certificate, which the world judges like any other (an honest
    /// voter's vote for a batch that breaks a rule shows up here).
    fn byzantine_collects(&mut self, node: usize, raw_vote: &[u8]) {
        let Ok(signed) = envelope::decode_vouched(&self.network, raw_vote, envelope::Voucher::Known) else {
            return;
        };
        let Ok(mut body) = pb::Vote::decode(signed.body.as_slice()) else {
            return;
        };
        let Ok(object_id) = <Digest>::try_from(body.object_id.as_slice()) else {
            return;
        };
        let network = self.network;
        let Some(n) = self.nodes.get_mut(node) else { return };
        let Some((_, votes, _)) = n.crafted.get_mut(&object_id) else {
            self.count("byzantine: a vote for something it did not craft");
            return;
        };
        votes.insert(body.voter.clone(), raw_vote.to_vec());
        let weight = votes.len().saturating_add(1) as u64;
        let region = self.setup.validators.iter().find(|v| v.key == n.signer.public_key());
        let Some(region) = region.map(|v| v.region.clone()) else {
            return;
        };
        if !n.machine.ledger().validators().is_quorum(&region, weight) {
            return;
        }
        let Some((object, votes, what)) = n.crafted.remove(&object_id) else {
            return;
        };
        body.voter = n.signer.public_key().to_vec();
        let (own, _) = seal_with(&network, &n.signer, Kind::Vote, body.encode_to_vec());
        let mut votes: Vec<Vec<u8>> = votes.into_values().collect();
        votes.push(own);
        let raw = pb::Certificate { object, votes }.encode_to_vec();
        self.count(&format!("byzantine: a quorum of votes for: {what}"));
        let raw = Rc::new(raw);
        if let Some(index) = self.register(node, &raw) {
            self.cert_by_fingerprint.insert(*blake3::hash(&raw).as_bytes(), index);
            self.gossip(node, None, Topic::Certificate, raw.to_vec());
        }
    }

    fn bucket_digest_of(&self, node: usize) -> Digest {
        self.bucket_index
            .iter()
            .find(|(_, owner)| **owner == node)
            .map(|(digest, _)| *digest)
            .unwrap_or_default()
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
        let in_flight = self.in_flight(node);
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.failed = true;
        n.fail_after_batch = false;
        self.failures.push(FailureRecord {
            node,
            at_us: self.now,
            in_flight,
        });
        self.count("fault: failed for good");
        self.crash(node);
    }

    /// The node's last own batch on its disk that no certificate covers yet.
    fn in_flight(&self, node: usize) -> Option<(u64, usize)> {
        let n = self.nodes.get(node)?;
        let last = n.disk.last_own_batch()?;
        let (seq, claims) = self.decode_batch(&last)?;
        self.registry
            .object_at(node, seq)
            .is_none()
            .then_some((seq, claims.len()))
    }

    /// Every node's state digest (what its heartbeats carry); `None` for a node that is down.
    fn digests(&self) -> Vec<Option<Digest>> {
        self.nodes
            .iter()
            .map(|n| n.up.then(|| n.machine.ledger().state_digest()))
            .collect()
    }

    /// Restart from the disk: a new state machine from `locks.log`, the certificate log
    /// replayed (unless the ledger is volatile), the held claims restored: what `node::start`
    /// does.
    fn restart(&mut self, node: usize) {
        let durable = self.cfg.durable_ledger;
        let book = {
            let mut book = Self::empty_book(&self.genesis);
            for a in &self.attestations {
                let _ = book.apply(T0_MS, a);
            }
            for r in &self.revocations {
                let _ = book.apply(T0_MS + self.now / 1_000, r);
            }
            book
        };
        let network = self.network;
        let setup = self.setup.clone();
        let check = self.check.clone();
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.up || n.failed {
            return;
        }
        let Ok(mut machine) = Validator::with_check(&setup, Box::new(n.signer.clone()), &n.disk.locks, check.clone())
        else {
            return;
        };
        if !durable {
            n.disk.certs.clear();
        }
        n.book = book;
        n.clock_floor_ms = 0;
        n.cursors.clear();
        n.known = KnownSignatures::with_check(crate::core::validator::KNOWN_SIGNATURES_MAX, check);
        n.up = true;
        let now_ms = T0_MS + self.now / 1_000;
        for raw in &n.disk.certs {
            let _ = machine.step(now_ms, &n.book, Input::Certificate { raw });
        }
        for r in &self.rebalances {
            let _ = machine.add_rebalance(r, &self.genesis.operators);
        }
        machine.resume();
        for (received_at, raw) in n.disk.held.values() {
            if let Ok(claim) = envelope::decode(&network, raw).and_then(|u| n.known.verify(u)) {
                machine.restore_held(claim, *received_at);
            }
        }
        n.machine = machine;
        let epoch = n.epoch;
        self.count("fault: restart");
        self.queue.push(self.now, Event::Sync { node, epoch });
        if let Some(n) = self.nodes.get_mut(node) {
            n.next_tick = self.now;
        }
        self.queue.push(self.now, Event::Tick { node, epoch });
    }

    fn end_faults(&mut self) {
        self.trace_event(41, 0, 0, [0; 8]);
        self.faults_active = false;
        self.partition = None;
        self.link = LinkModel::CALM;
        for node in 0..self.nodes.len() {
            if let Some(n) = self.nodes.get_mut(node) {
                n.jump_ms = 0;
            }
            self.restart(node);
        }
        self.queue.push(self.now, Event::Check);
    }

    // ---------------------------------------------------------------- liveness

    /// Valid claims homed at the Byzantine owner's bucket may stall (DESIGN.md: a Byzantine
    /// owner can at worst stall its own bucket).
    fn exempt(&self, claim: &ClaimRecord) -> bool {
        self.byzantine.is_some() && claim.home == self.byzantine
    }

    /// Valid claims whose slot nobody has funded yet.
    fn pending_claims(&self) -> usize {
        self.claims
            .iter()
            .filter(|c| c.valid && !self.exempt(c) && !self.settled_unpaid(c) && !self.registry.is_funded(&c.slot))
            .count()
    }

    /// With a workload, a claim refused for good (its bucket had no escrow left, its credential
    /// was revoked) is settled without being paid: at a node that refused it, or at its home
    /// owner, which says so.
    fn settled_unpaid(&self, claim: &ClaimRecord) -> bool {
        if self.cfg.workload.is_none() {
            return false;
        }
        if claim.refused.is_some() || claim.revoked_at.is_some() {
            return true;
        }
        self.home_refusal(claim).is_some()
    }

    /// The reason the claim's home owner refused it for good, if it did.
    fn home_refusal(&self, claim: &ClaimRecord) -> Option<String> {
        let owner = self.nodes.get(claim.home?)?;
        match owner.machine.claim_status(&owner.book, &claim.id)?.0 {
            crate::core::escrow::ClaimStatus::Rejected { reason } if super::stress::final_refusal(&reason) => {
                Some(super::stress::reason_name(&reason.to_string()))
            }
            _ => None,
        }
    }

    fn live_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.failed)
    }

    /// Nodes whose certified state differs from the oracle's.
    fn lagging_nodes(&self) -> usize {
        let target = self.oracle.state_digest();
        self.live_nodes()
            .filter(|n| !n.up || n.machine.ledger().state_digest() != target)
            .count()
    }

    fn check_converged(&mut self) {
        if self.pending_claims() == 0 && self.lagging_nodes() == 0 {
            self.converged_us = Some(self.now);
        }
    }

    fn stuck_reason(&self) -> String {
        let pending: Vec<String> = self
            .claims
            .iter()
            .filter(|c| c.valid && !self.exempt(c) && !self.settled_unpaid(c) && !self.registry.is_funded(&c.slot))
            .take(5)
            .map(|c| {
                format!(
                    "claim {} (home {:?}, created {} ms, provisional {:?})",
                    short(&c.id),
                    c.home,
                    c.created_us / 1_000,
                    c.provisional_us.map(|t| t / 1_000)
                )
            })
            .collect();
        // What the first unpaid claim's home owner says of it.
        let at_home = self
            .claims
            .iter()
            .find(|c| c.valid && !self.exempt(c) && !self.settled_unpaid(c) && !self.registry.is_funded(&c.slot))
            .and_then(|c| {
                let owner = self.nodes.get(c.home?)?;
                let (status, timeline) = owner.machine.claim_status(&owner.book, &c.id)?;
                Some(format!("; its owner says {status:?} ({})", timeline.reason))
            })
            .unwrap_or_default();
        format!(
            "not converged {} ms after the faults stopped: {} valid claims unpaid, {} nodes lagging the certified \
             state{}{}{at_home}",
            self.cfg.tail_us / 1_000,
            self.pending_claims(),
            self.lagging_nodes(),
            if pending.is_empty() { "" } else { "; e.g. " },
            pending.join(", ")
        )
    }

    // ---------------------------------------------------------------- report

    fn outcome(self) -> RunOutcome {
        let record = self.record();
        let mut regional = Vec::new();
        let mut global = Vec::new();
        let (mut n_global, mut n_regional, mut n_provisional, mut n_received, mut n_rejected, mut n_exempt) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for claim in &self.claims {
            match claim.certificate.and_then(|i| self.certs.get(i)) {
                Some(cert) => {
                    regional.push(cert.record.formed_us.saturating_sub(claim.created_us) as f64 / 1_000.0);
                    match cert.record.global_us {
                        Some(at) => {
                            n_global = n_global.saturating_add(1);
                            global.push(at.saturating_sub(claim.created_us) as f64 / 1_000.0);
                        }
                        None => n_regional = n_regional.saturating_add(1),
                    }
                }
                None if !claim.valid || self.registry.is_funded(&claim.slot) => {
                    n_rejected = n_rejected.saturating_add(1);
                }
                None if self.exempt(claim) => n_exempt = n_exempt.saturating_add(1),
                None if claim.provisional_us.is_some() => n_provisional = n_provisional.saturating_add(1),
                None => n_received = n_received.saturating_add(1),
            }
        }
        let mut counters = self.counters.clone();
        let mut add = |name: &str, value: u64| {
            if value > 0 {
                let entry = counters.entry(name.to_owned()).or_default();
                *entry = entry.saturating_add(value);
            }
        };
        for n in &self.nodes {
            add("suspicion: suspected a region peer", n.machine.stats.peers_suspected);
            add(
                "takeover: withheld, the region's quorum was not reachable throughout",
                n.machine.stats.takeovers_withheld,
            );
            add("takeover: proposed", n.machine.stats.takeovers_proposed);
        }
        let nodes = self.nodes.len().max(1) as f64;
        let virtual_s = (self.now as f64 / 1e6).max(1e-6);
        let sent: u64 = self.nodes.iter().map(|n| n.sent_msgs).sum();
        let recv: u64 = self.nodes.iter().map(|n| n.recv_msgs).sum();
        let sent_bytes: u64 = self.nodes.iter().map(|n| n.sent_bytes).sum();
        let recv_bytes: u64 = self.nodes.iter().map(|n| n.recv_bytes).sum();
        let summary = Summary {
            nodes: self.nodes.len(),
            regions: self.cfg.regions,
            faults: self
                .cfg
                .script
                .as_ref()
                .map_or(self.cfg.profile.name().into(), |s| s.name.to_owned()),
            duration_ms: self.cfg.duration_us / 1_000,
            virtual_end_ms: self.now / 1_000,
            converged_after_faults_ms: self
                .converged_us
                .map(|at| at.saturating_sub(self.cfg.duration_us) / 1_000),
            claims_submitted: self.claims.len() as u64,
            claims_global: n_global,
            claims_regional: n_regional,
            claims_provisional: n_provisional,
            claims_received: n_received,
            claims_rejected: n_rejected,
            claims_exempt_byzantine_owner: n_exempt,
            certificates: self.certs.len() as u64,
            regional_p50_ms: percentile(&mut regional.clone(), 50.0),
            regional_p99_ms: percentile(&mut regional, 99.0),
            global_p50_ms: percentile(&mut global.clone(), 50.0),
            global_p99_ms: percentile(&mut global, 99.0),
            messages_sent_per_node: sent as f64 / nodes,
            messages_received_per_node: recv as f64 / nodes,
            bytes_sent_per_node: sent_bytes as f64 / nodes,
            bytes_received_per_node: recv_bytes as f64 / nodes,
            messages_per_node_per_s: (sent + recv) as f64 / nodes / virtual_s,
            bytes_per_node_per_s: (sent_bytes + recv_bytes) as f64 / nodes / virtual_s,
            max_messages_sent_by_a_node: self.nodes.iter().map(|n| n.sent_msgs).max().unwrap_or(0),
            events: self.events,
            byzantine_node: self.byzantine,
            counters,
        };
        RunOutcome {
            seed: self.cfg.seed,
            trace_hash: self.trace.finalize().to_hex().to_string(),
            failure: self.violation.as_ref().map(ToString::to_string),
            summary,
            record,
        }
    }

    /// How a claim ended, for the stress checks (workload runs only: it asks every node).
    fn claim_end(&self, c: &ClaimRecord) -> ClaimEnd {
        if self.cfg.workload.is_none() {
            return ClaimEnd::default();
        }
        let certified = self.oracle.certified_claim(&c.id);
        let mut end = ClaimEnd {
            refused: c.refused.clone().or_else(|| self.home_refusal(c)),
            revoked_at: c.revoked_at,
            batch_timestamp: certified.map(|cc| cc.batch_timestamp),
            ..ClaimEnd::default()
        };
        if certified.is_some() {
            for n in self.live_nodes().filter(|n| n.up) {
                match n.machine.claim_status(&n.book, &c.id).map(|(status, _)| status) {
                    Some(crate::core::escrow::ClaimStatus::Disputed { .. }) => {
                        end.disputed_at = end.disputed_at.saturating_add(1)
                    }
                    Some(
                        crate::core::escrow::ClaimStatus::Regional { .. }
                        | crate::core::escrow::ClaimStatus::Global { .. },
                    ) => end.credited_at = end.credited_at.saturating_add(1),
                    _ => end.other_at = end.other_at.saturating_add(1),
                }
            }
        }
        end
    }

    /// The pieces of the world a stress sample reads.
    pub(super) fn sample_parts(&self) -> super::stress::SampleParts<'_> {
        super::stress::SampleParts {
            now_us: self.now,
            oracle: &self.oracle,
            dist_id: &self.dist_id,
            nodes: self
                .nodes
                .iter()
                .map(|n| (n.region, n.up, &n.machine, &n.book, T0_MS + self.now / 1_000))
                .collect(),
            region_names: (0..self.cfg.regions).map(region_name).collect(),
        }
    }

    fn record(&self) -> RunRecord {
        RunRecord {
            regions: self.nodes.iter().map(|n| n.region).collect(),
            successors: self.successors.clone(),
            certificates: self.certs.iter().map(|c| c.record.clone()).collect(),
            claims: self
                .claims
                .iter()
                .map(|c| ClaimTrace {
                    created_us: c.created_us,
                    valid: c.valid,
                    home: c.home,
                    provisional_us: c.provisional_us,
                    held: c.held,
                    duplicate: c.valid && c.certificate.is_none() && self.registry.is_funded(&c.slot),
                    certificate: c.certificate,
                    region: c.region,
                    end: self.claim_end(c),
                })
                .collect(),
            snapshots: self.snapshots.clone(),
            final_digests: self.digests(),
            failures: self.failures.clone(),
            samples: self.samples.clone(),
            region_names: (0..self.cfg.regions).map(region_name).collect(),
            allocations: self.allocations.clone(),
        }
    }
}
