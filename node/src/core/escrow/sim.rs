//! Deterministic randomized simulation of the escrow core: validators in one to three regions,
//! each with a voter, a ledger and an owner, exchanging messages through a bag drained in random
//! order (reordering), sometimes twice (duplication), lost when sent to a crashed node.
//!
//! Two profiles:
//! - `STORM` (200 seeds): credential delays (voters answer "need data"), crashes that keep only
//!   durable records (locks, the owner's last batch) including a kill between persisting a lock
//!   and sending its vote, freezes and successor routing, transfers, closes, revocations
//!   (disputes), duplicate and conflicting claims, and an owner that equivocates.
//! - `FORGERY` (100 seeds): one region, honest voters that know everything, and an owner that
//!   forges every batch with one targeted defect (replayed slot, foreign claim, duplicate in batch,
//!   flood past escrow or breaker, understated total, forked prev) and a voter that signs anything.
//!
//! Invariants are checked after every step: at most one certificate per (bucket, seq), no slot
//! funded twice, no bucket past its escrow, no breaker window exceeded, spent ≤ total, conservation
//! per region and per distribution, credited + disputed = spent, honest validators never vote twice
//! at one position and never before the lock is durable. After the run every node heals and must
//! reach the same state digest. A failing run prints its seed; replay it with
//! `SIM_SEED=<seed> cargo test sim -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::tests::{AMOUNT, Creds, ISSUER, OPENS, SCHEMA, attestation_id, distribution, key, make_claim};
use super::*;

/// SplitMix64: tiny, seeded, good enough to pick interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const SKEW: u64 = 500;

/// A node's view of the credential store: each attestation and revocation reaches each node after
/// its own delay, so voters and owners sometimes lack data (and must answer "need data").
struct NodeView<'a> {
    creds: &'a Creds,
    delay_max_ms: u64,
    seed: u64,
    node: usize,
    now: Millis,
}

impl NodeView<'_> {
    fn known(&self, id: &Digest, published_at: Millis) -> bool {
        let delay = digest_parts(
            "delay",
            &[&self.seed.to_le_bytes(), &(self.node as u64).to_le_bytes(), id],
        );
        let delay = u64::from(u16::from_le_bytes([delay[0], delay[1]])) % self.delay_max_ms.max(1);
        self.now >= published_at + delay
    }
}

impl CredentialView for NodeView<'_> {
    fn attestation(&self, id: &Digest) -> Option<AttestationFacts> {
        self.creds.attestation(id).filter(|_| self.known(id, OPENS))
    }
    fn revocation(&self, id: &Digest) -> Option<Millis> {
        self.creds
            .revocation(id)
            .filter(|revoked_at| self.known(id, *revoked_at))
    }
}
/// Node index of the Byzantine validator: it equivocates as an owner and votes for anything.
const BYZANTINE: usize = 3;

#[derive(Debug, Clone)]
enum Request {
    Batch(Batch),
    Freeze(Freeze),
}

#[derive(Debug, Clone)]
enum Msg {
    Claim {
        to: usize,
        claim: Claim,
    },
    Request {
        to: usize,
        request: Request,
        collector: usize,
        attempts: u8,
    },
    Vote {
        to: usize,
        vote: Vote,
        object: CertifiedObject,
    },
    Cert {
        to: usize,
        cert: Certificate,
    },
}

impl Msg {
    fn to(&self) -> usize {
        match self {
            Msg::Claim { to, .. } | Msg::Request { to, .. } | Msg::Vote { to, .. } | Msg::Cert { to, .. } => *to,
        }
    }
}

struct Node {
    key: Key,
    region: String,
    up: bool,
    voter: Voter,
    ledger: Ledger,
    owner: Owner,
    /// Durable records: what survives a crash.
    durable_locks: Vec<Lock>,
    durable_batch: Option<Batch>,
    /// Votes collected for objects this node proposed (lost on crash).
    collecting: BTreeMap<Digest, (CertifiedObject, BTreeMap<Key, Vote>)>,
    /// Newest batch seen per bucket (a freeze proposer carries it as pending).
    seen: BTreeMap<Digest, Batch>,
    /// Every claim delivered to this node (the Byzantine owner stuffs them into forged batches).
    inbox: Vec<Claim>,
    /// Every claim gossiped anywhere, homed anywhere (the last 64).
    gossip: Vec<Claim>,
}

/// How hostile a run is.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Attestations and revocations reach each node within this delay.
    credential_delay_max_ms: u64,
    /// How often the Byzantine owner forges or equivocates a batch.
    forge_percent: u64,
    /// Whether nodes crash and restart.
    crashes: bool,
    /// Whether validators propose freezes (takeovers).
    freezes: bool,
    /// How many regions at most (the third comes with every other seed).
    regions: usize,
}

/// Everything at once: delays, crashes, duplicates, reordering, an equivocating owner.
const STORM: Profile = Profile {
    credential_delay_max_ms: 6_000,
    forge_percent: 60,
    crashes: true,
    freezes: true,
    regions: 3,
};

/// Honest voters that know everything, facing an owner that forges every batch: every rule a
/// forged batch breaks must be refused, or a certificate breaks an invariant.
const FORGERY: Profile = Profile {
    credential_delay_max_ms: 1,
    forge_percent: 100,
    crashes: false,
    freezes: false,
    regions: 1,
};

struct World {
    seed: u64,
    profile: Profile,
    step: usize,
    rng: Rng,
    now: Millis,
    validators: ValidatorSet,
    dist: Distribution,
    nodes: Vec<Node>,
    bag: Vec<Msg>,
    creds: Creds,
    /// Claimant keys and their attestations (some have two: conflicting claims).
    claimants: Vec<(Key, Vec<Digest>)>,
    /// Every certificate formed anywhere, by position.
    registry: BTreeMap<(Digest, u64), Certificate>,
    funded_slots: BTreeSet<Digest>,
    oracle: Ledger,
    /// Every vote an honest validator ever sent, by position.
    honest_votes: BTreeMap<(Key, Digest, u64), Digest>,
    equivocations: usize,
    /// Nodes whose ledger changed in this step (their own view is checked too).
    dirty: BTreeSet<usize>,
    /// Outcome counters, to see that a run exercised the protocol.
    stats: BTreeMap<String, usize>,
}

type Check = Result<(), String>;

macro_rules! ensure {
    ($world:expr, $cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!("seed {} step {}: {}", $world.seed, $world.step, format!($($arg)*)));
        }
    };
}

impl World {
    fn new(seed: u64, profile: Profile) -> Self {
        let mut rng = Rng(seed);
        let mut validators = Vec::new();
        let mut regions: Vec<(String, Vec<(u8, u64)>)> = vec![("eu".into(), vec![(1, 1), (2, 1), (3, 1), (4, 1)])];
        if profile.regions >= 2 {
            regions.push(("us".into(), vec![(5, 2), (6, 1), (7, 1)]));
        }
        if profile.regions >= 3 && rng.chance(50) {
            regions.push(("ap".into(), vec![(8, 1), (9, 1), (10, 1)]));
        }
        for (region, members) in &regions {
            for (n, weight) in members {
                validators.push(Validator {
                    key: key(*n),
                    region: region.clone(),
                    weight: *weight,
                });
            }
        }
        let set = ValidatorSet::new(validators.clone(), FaultModel::Byzantine).unwrap();
        let allocations: Vec<(String, u64)> = regions
            .iter()
            .map(|(region, _)| (region.clone(), 100 + 10 * rng.below(15) as u64))
            .collect();
        let (max_outflow, window) = if rng.chance(50) { (20, 3_000) } else { (0, 0) };
        let mut dist = distribution(allocations, max_outflow, window);
        dist.id = digest_parts("sim-distribution", &[&seed.to_le_bytes()]);
        let mut oracle = Ledger::new(set.clone(), 10_000);
        oracle.add_distribution(dist.clone()).unwrap();
        let nodes = validators
            .iter()
            .map(|v| {
                let mut ledger = Ledger::new(set.clone(), 256);
                ledger.add_distribution(dist.clone()).unwrap();
                let bucket = BucketId {
                    distribution: dist.id,
                    region: v.region.clone(),
                    owner: v.key,
                };
                Node {
                    key: v.key,
                    region: v.region.clone(),
                    up: true,
                    voter: Voter::new(v.key, v.region.clone(), VoterConfig { clock_skew_ms: SKEW }),
                    ledger,
                    owner: Owner::new(v.key, bucket, owner_config()),
                    durable_locks: Vec::new(),
                    durable_batch: None,
                    collecting: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    inbox: Vec::new(),
                    gossip: Vec::new(),
                }
            })
            .collect();
        let mut creds = Creds::default();
        let mut claimants = Vec::new();
        for i in 0..60u64 {
            let claimant = digest_parts("claimant", &[&seed.to_le_bytes(), &i.to_le_bytes()]);
            let count = if rng.chance(20) { 2 } else { 1 };
            let mut ids = Vec::new();
            for nonce in 0..count {
                let facts = AttestationFacts {
                    issuer: key(ISSUER),
                    subject: claimant,
                    schema: SCHEMA.into(),
                    issued_at: 0,
                    expires_at: OPENS + 10_000_000,
                };
                let id = attestation_id(&facts, i * 10 + nonce);
                creds.attestations.insert(id, facts);
                ids.push(id);
            }
            claimants.push((claimant, ids));
        }
        Self {
            seed,
            profile,
            step: 0,
            rng,
            now: OPENS + 1_000,
            validators: set,
            dist,
            nodes,
            bag: Vec::new(),
            creds,
            claimants,
            registry: BTreeMap::new(),
            funded_slots: BTreeSet::new(),
            oracle,
            honest_votes: BTreeMap::new(),
            equivocations: 0,
            stats: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    fn count(&mut self, what: String) {
        *self.stats.entry(what).or_insert(0) += 1;
    }

    fn region_nodes(&self, region: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].region == region)
            .collect()
    }

    fn node_of(&self, owner: &Key) -> usize {
        self.nodes.iter().position(|n| n.key == *owner).unwrap()
    }

    fn run(&mut self, steps: usize) -> Check {
        for step in 0..steps {
            self.step = step;
            self.act()?;
            self.check_invariants()?;
        }
        self.heal()
    }

    fn act(&mut self) -> Check {
        self.now += self.rng.below(120) as u64;
        let roll = self.rng.below(100);
        match roll {
            0..=19 => self.submit_claim(),
            20..=69 => {
                // A burst: the network moves faster than clients and timers.
                for _ in 0..1 + self.rng.below(8) {
                    self.deliver()?;
                }
                Ok(())
            }
            70..=79 => self.close_batch(),
            80..=84 => self.resend(),
            85..=87 if self.profile.crashes => self.crash_or_restart(),
            88 if self.profile.freezes && self.rng.chance(30) => self.propose_freeze(),
            90..=91 => self.transfer(),
            92 => self.revoke(),
            93 => {
                let i = self.rng.below(self.nodes.len());
                if self.rng.chance(10) && i != BYZANTINE {
                    self.nodes[i].owner.request_close();
                }
                Ok(())
            }
            _ => self.sync_one(),
        }
    }

    fn submit_claim(&mut self) -> Check {
        let (claimant, attestations) = self.claimants[self.rng.below(self.claimants.len())].clone();
        let mut attestation = attestations[self.rng.below(attestations.len())];
        if self.rng.chance(10) {
            // Someone else's credential.
            let other = &self.claimants[self.rng.below(self.claimants.len())].1;
            attestation = other[0];
        }
        let created_at = self.now.saturating_sub(self.rng.below(50) as u64);
        let claim = make_claim(self.dist.id, claimant, attestation, AMOUNT, created_at);
        let via = self.rng.below(self.nodes.len());
        if let Some(Route::Live { bucket, .. }) = self.nodes[via].ledger.route(&self.dist.id, &claimant) {
            let (_, plan) = self.oracle.bucket(&bucket).unwrap();
            let to = self.node_of(&plan.id.owner);
            // Claims are gossiped: the Byzantine owner sees them all, homed anywhere.
            let gossip = &mut self.nodes[BYZANTINE].gossip;
            if gossip.len() >= 64 {
                gossip.remove(0);
            }
            gossip.push(claim.clone());
            self.bag.push(Msg::Claim { to, claim });
        }
        Ok(())
    }

    fn deliver(&mut self) -> Check {
        if self.bag.is_empty() {
            return Ok(());
        }
        let msg = self.bag.swap_remove(self.rng.below(self.bag.len()));
        if self.rng.chance(5) {
            self.bag.push(msg.clone()); // the network duplicates it
        }
        let to = msg.to();
        if !self.nodes[to].up {
            return Ok(()); // a crashed node loses what was sent to it
        }
        match msg {
            Msg::Claim { claim, .. } => {
                if to == BYZANTINE && self.nodes[to].inbox.len() < 256 {
                    self.nodes[to].inbox.push(claim.clone());
                }
                let view = NodeView {
                    creds: &self.creds,
                    seed: self.seed,
                    delay_max_ms: self.profile.credential_delay_max_ms,
                    node: to,
                    now: self.now,
                };
                let node = &mut self.nodes[to];
                let result = node.owner.submit_claim(&node.ledger, &view, claim, self.now);
                match result {
                    Ok(outputs) => {
                        self.count("owner: accepted".into());
                        self.owner_outputs(to, outputs)?;
                    }
                    Err(refusal) => self.count(format!("owner: {}", variant(&refusal))),
                }
            }
            Msg::Request {
                request,
                collector,
                attempts,
                ..
            } => {
                self.handle_request(to, request, collector, attempts)?;
            }
            Msg::Vote { vote, object, .. } => self.collect(to, vote, object)?,
            Msg::Cert { cert, .. } => self.apply_at(to, cert)?,
        }
        Ok(())
    }

    fn owner_outputs(&mut self, node: usize, outputs: Vec<OwnerOutput>) -> Check {
        for output in outputs {
            match output {
                OwnerOutput::PersistBatch(batch) => self.nodes[node].durable_batch = Some(batch),
                OwnerOutput::SendBatch(batch) => self.send_batch(node, batch),
                OwnerOutput::Dropped { reason, .. } => {
                    self.count(format!("owner dropped: {}", variant(&reason)));
                }
            }
        }
        Ok(())
    }

    fn send_batch(&mut self, node: usize, batch: Batch) {
        let region = self.nodes[node].region.clone();
        let members = self.region_nodes(&region);
        if node == BYZANTINE && batch.claims().count() > 0 && self.rng.chance(self.profile.forge_percent) {
            // Equivocate: a second batch at the same seq, split across the voters. The second
            // one drops an entry, tries to overspend, or stuffs in claims the owner never vetted
            // (duplicates, other homes, other people's credentials, past the breaker).
            let mut entries = batch.entries.clone();
            let base = batch.total_after - entries.iter().map(Entry::amount).sum::<u64>();
            let attack = self.rng.below(8);
            match attack {
                0 => {
                    entries.pop();
                }
                // Understate the total (below), or fork off an older point of the chain.
                5 | 6 => {}
                // One claim twice in the same batch.
                7 => {
                    if let Some(Entry::Claim(claim)) = entries.first().cloned() {
                        entries = vec![Entry::Claim(claim.clone()), Entry::Claim(claim)];
                    }
                }
                1 => {
                    let others: Vec<BucketId> = self
                        .nodes
                        .iter()
                        .map(|n| n.owner.bucket().clone())
                        .filter(|b| *b != batch.bucket)
                        .collect();
                    let to = others[self.rng.below(others.len())].clone();
                    let amount = 10 * (1 + self.rng.below(20) as u64);
                    entries.push(Entry::TransferOut { to, amount });
                }
                _ => {
                    // Stuff in claims aimed at one rule each: slots already funded (replays),
                    // claims homed elsewhere, or a flood of fresh ones (escrow, breaker).
                    let in_batch: Vec<Digest> = batch.claims().map(|c| c.id).collect();
                    let own = batch.bucket.digest();
                    let candidates: Vec<Claim> = match attack {
                        2 => self.nodes[node]
                            .inbox
                            .iter()
                            .filter(|c| self.funded_slots.contains(&c.slot()))
                            .cloned()
                            .collect(),
                        3 => self.nodes[node]
                            .gossip
                            .iter()
                            .filter(|c| {
                                !matches!(
                                    self.oracle.route(&self.dist.id, &c.claimant),
                                    Some(Route::Live { bucket, .. }) if bucket == own
                                )
                            })
                            .cloned()
                            .collect(),
                        _ => self.nodes[node]
                            .inbox
                            .iter()
                            .filter(|c| !self.funded_slots.contains(&c.slot()))
                            .cloned()
                            .collect(),
                    };
                    let candidates: Vec<Claim> = candidates.into_iter().filter(|c| !in_batch.contains(&c.id)).collect();
                    self.count(format!(
                        "forge attack {attack}: {} candidates",
                        if candidates.is_empty() { "no" } else { "some" }
                    ));
                    if attack == 4 {
                        for _ in 0..1 + self.rng.below(4) {
                            if candidates.is_empty() {
                                break;
                            }
                            let claim = candidates[self.rng.below(candidates.len())].clone();
                            entries.push(Entry::Claim(claim));
                        }
                    } else if !candidates.is_empty() {
                        // One targeted claim alone, so no other rule masks the one under attack.
                        let claim = candidates[self.rng.below(candidates.len())].clone();
                        entries = vec![Entry::Claim(claim)];
                    }
                }
            }
            let mut total_after = base + entries.iter().map(Entry::amount).sum::<u64>();
            let mut prev = batch.prev;
            match attack {
                5 => total_after = total_after.saturating_sub(AMOUNT),
                6 => prev = ZERO_DIGEST,
                _ => {}
            }
            let other = Batch::new(
                batch.signer,
                batch.bucket.clone(),
                batch.seq,
                prev,
                batch.timestamp + 1,
                entries,
                total_after,
            );
            if Equivocation::check(batch.clone(), other.clone()).is_ok() {
                self.equivocations += 1;
            }
            // Half the time a pure forgery: every honest voter sees only the second batch.
            let forge_only = self.rng.chance(50);
            for to in members {
                let request = if to == BYZANTINE || (!forge_only && self.rng.chance(50)) {
                    Request::Batch(batch.clone())
                } else {
                    Request::Batch(other.clone())
                };
                self.bag.push(Msg::Request {
                    to,
                    request,
                    collector: node,
                    attempts: 0,
                });
                if to == BYZANTINE {
                    let request = Request::Batch(other.clone());
                    self.bag.push(Msg::Request {
                        to,
                        request,
                        collector: node,
                        attempts: 0,
                    });
                }
            }
            return;
        }
        for to in members {
            let request = Request::Batch(batch.clone());
            self.bag.push(Msg::Request {
                to,
                request,
                collector: node,
                attempts: 0,
            });
        }
    }

    fn handle_request(&mut self, to: usize, request: Request, collector: usize, attempts: u8) -> Check {
        let now = self.now;
        let view = NodeView {
            creds: &self.creds,
            seed: self.seed,
            delay_max_ms: self.profile.credential_delay_max_ms,
            node: to,
            now,
        };
        let node = &mut self.nodes[to];
        let result = match &request {
            Request::Batch(batch) => {
                node.seen.insert(batch.bucket.digest(), batch.clone());
                if to == BYZANTINE {
                    // Signs anything, no rules, no locks.
                    Ok(vec![VoterOutput::SendVote(Vote {
                        signer: node.key,
                        object_id: batch.id,
                        bucket: batch.bucket.digest(),
                        seq: batch.seq,
                        region: node.region.clone(),
                    })])
                } else {
                    node.voter.on_batch(&node.ledger, &view, batch, now)
                }
            }
            Request::Freeze(freeze) => {
                if to == BYZANTINE {
                    let mut votes = vec![VoterOutput::SendVote(Vote {
                        signer: node.key,
                        object_id: freeze.id,
                        bucket: freeze.bucket.digest(),
                        seq: freeze.position().unwrap(),
                        region: node.region.clone(),
                    })];
                    if let Some(pending) = &freeze.pending {
                        votes.push(VoterOutput::SendVote(Vote {
                            signer: node.key,
                            object_id: pending.id,
                            bucket: pending.bucket.digest(),
                            seq: pending.seq,
                            region: node.region.clone(),
                        }));
                    }
                    Ok(votes)
                } else {
                    node.voter.on_freeze(&node.ledger, &view, freeze, now)
                }
            }
        };
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(refusal) => {
                let detail = match &refusal {
                    VoteRefusal::InvalidClaim { defect, .. } => format!(" {}", variant(defect)),
                    _ => String::new(),
                };
                self.count(format!("voter: {}{detail}", variant(&refusal)));
                return Ok(());
            }
        };
        let mut need = Vec::new();
        for output in outputs {
            match output {
                VoterOutput::Persist(lock) => {
                    self.nodes[to].durable_locks.push(lock);
                    if to != BYZANTINE && self.profile.crashes && self.rng.chance(3) {
                        // Killed after the fsync, before the vote left: the lock must hold.
                        self.nodes[to].up = false;
                        self.count("crash between persist and send".into());
                        return Ok(());
                    }
                }
                VoterOutput::SendVote(vote) => {
                    if to != BYZANTINE {
                        let position = (vote.signer, vote.bucket, vote.seq);
                        let durable = self.nodes[to]
                            .durable_locks
                            .iter()
                            .any(|l| l.bucket == vote.bucket && l.seq == vote.seq && l.object_id == vote.object_id);
                        ensure!(self, durable, "vote sent before its lock was persisted");
                        if let Some(previous) = self.honest_votes.insert(position, vote.object_id) {
                            ensure!(
                                self,
                                previous == vote.object_id,
                                "honest validator voted twice at one position"
                            );
                        }
                    }
                    let object = match &request {
                        Request::Batch(batch) => CertifiedObject::Batch(batch.clone()),
                        Request::Freeze(freeze) => match &freeze.pending {
                            Some(pending) if pending.id == vote.object_id => {
                                CertifiedObject::Batch((**pending).clone())
                            }
                            _ => CertifiedObject::Freeze(freeze.clone()),
                        },
                    };
                    self.bag.push(Msg::Vote {
                        to: collector,
                        vote,
                        object,
                    });
                }
                VoterOutput::NeedData(missing) => {
                    self.count(format!("voter: need {}", variant(&missing)));
                    need.push(missing);
                }
            }
        }
        if !need.is_empty() {
            // Fetch what is missing (from whoever has it) and ask again later.
            for missing in need {
                let bucket = match missing {
                    Missing::Certificate { bucket, .. } | Missing::FreezeOf { bucket } => bucket,
                    Missing::Attestation(_) | Missing::Distribution(_) => continue,
                };
                let certs: Vec<Certificate> = self
                    .registry
                    .range((bucket, 0)..=(bucket, u64::MAX))
                    .map(|(_, c)| c.clone())
                    .collect();
                for cert in certs {
                    self.bag.push(Msg::Cert { to, cert });
                }
            }
            if attempts < 6 {
                self.bag.push(Msg::Request {
                    to,
                    request,
                    collector,
                    attempts: attempts + 1,
                });
            }
        }
        Ok(())
    }

    fn collect(&mut self, to: usize, vote: Vote, object: CertifiedObject) -> Check {
        let entry = self.nodes[to]
            .collecting
            .entry(object.id())
            .or_insert_with(|| (object.clone(), BTreeMap::new()));
        entry.1.insert(vote.signer, vote);
        let votes: Vec<Vote> = entry.1.values().cloned().collect();
        let cert = Certificate { object, votes };
        if cert.check(&self.validators).is_err() {
            return Ok(());
        }
        self.register(cert.clone())?;
        for i in 0..self.nodes.len() {
            self.bag.push(Msg::Cert {
                to: i,
                cert: cert.clone(),
            });
        }
        self.apply_at(to, cert)
    }

    /// A certificate formed: the global checks that need every certificate ever made.
    fn register(&mut self, cert: Certificate) -> Check {
        let bucket = cert.object.bucket().digest();
        let seq = cert.object.seq().unwrap();
        if let Some(existing) = self.registry.get(&(bucket, seq)) {
            ensure!(
                self,
                existing.object.id() == cert.object.id(),
                "two certificates at one (bucket, seq {seq})"
            );
            return Ok(());
        }
        if let CertifiedObject::Batch(batch) = &cert.object {
            for claim in batch.claims() {
                ensure!(self, self.funded_slots.insert(claim.slot()), "slot funded twice");
            }
        }
        self.registry.insert((bucket, seq), cert.clone());
        if let CertifiedObject::Batch(batch) = &cert.object
            && self.dist.outflow_window_ms > 0
        {
            let from = batch.timestamp.saturating_sub(self.dist.outflow_window_ms);
            let outflow: u64 = self
                .registry
                .range((bucket, 0)..=(bucket, u64::MAX))
                .filter_map(|(_, c)| match &c.object {
                    CertifiedObject::Batch(b) if b.timestamp > from && b.timestamp <= batch.timestamp => {
                        Some(b.claims().map(|c| c.amount).sum::<u64>())
                    }
                    _ => None,
                })
                .sum();
            ensure!(
                self,
                outflow <= self.dist.max_outflow_per_window,
                "outflow {outflow} in a window passes the breaker"
            );
        }
        let outcome = self.oracle.apply(cert);
        ensure!(
            self,
            matches!(outcome, Ok(ApplyOutcome::Applied { .. })),
            "oracle could not apply a formed certificate: {outcome:?}"
        );
        Ok(())
    }

    fn apply_at(&mut self, to: usize, cert: Certificate) -> Check {
        self.dirty.insert(to);
        let node = &mut self.nodes[to];
        let outcome = node.ledger.apply(cert);
        let ok = !matches!(
            outcome,
            Err(LedgerError::ConflictingCertificate { .. })
                | Err(LedgerError::InvalidCertifiedObject { .. })
                | Err(LedgerError::Overflow)
        );
        ensure!(self, ok, "node {to} failed to apply a certificate: {outcome:?}");
        let node = &mut self.nodes[to];
        let orphans = node.owner.sync(&node.ledger);
        // Claims stranded by a freeze go to the successor, as the shell would route them.
        for claim in orphans {
            self.count("orphan re-routed".into());
            if let Some(Route::Live { bucket, .. }) = self.nodes[to].ledger.route(&self.dist.id, &claim.claimant) {
                let (_, plan) = self.oracle.bucket(&bucket).unwrap();
                let owner = self.node_of(&plan.id.owner);
                self.bag.push(Msg::Claim { to: owner, claim });
            }
        }
        Ok(())
    }

    fn close_batch(&mut self) -> Check {
        let i = self.rng.below(self.nodes.len());
        if !self.nodes[i].up {
            return Ok(());
        }
        let node = &mut self.nodes[i];
        if let Ok(outputs) = node.owner.close_batch(&node.ledger, self.now) {
            self.owner_outputs(i, outputs)?;
        }
        Ok(())
    }

    fn resend(&mut self) -> Check {
        let i = self.rng.below(self.nodes.len());
        if !self.nodes[i].up {
            return Ok(());
        }
        if let Some(batch) = self.nodes[i].owner.in_flight().cloned() {
            self.send_batch(i, batch);
        }
        Ok(())
    }

    fn crash_or_restart(&mut self) -> Check {
        let i = self.rng.below(self.nodes.len());
        if self.nodes[i].up {
            self.nodes[i].up = false;
        } else {
            self.restart(i);
        }
        Ok(())
    }

    /// Restart from durable records only: locks and the owner's last batch. The ledger starts
    /// empty and catches up by sync.
    fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut ledger = Ledger::new(self.validators.clone(), 256);
        ledger.add_distribution(self.dist.clone()).unwrap();
        node.ledger = ledger;
        node.voter = Voter::restore(
            node.key,
            node.region.clone(),
            VoterConfig { clock_skew_ms: SKEW },
            node.durable_locks.clone(),
        );
        let bucket = node.owner.bucket().clone();
        node.owner = Owner::restore(node.key, bucket, owner_config(), node.durable_batch.clone());
        node.collecting.clear();
        node.seen.clear();
        node.up = true;
    }

    fn propose_freeze(&mut self) -> Check {
        let i = self.rng.below(self.nodes.len());
        if !self.nodes[i].up {
            return Ok(());
        }
        let region = self.nodes[i].region.clone();
        let members = self.region_nodes(&region);
        let target = members[self.rng.below(members.len())];
        if target == i {
            return Ok(());
        }
        let node = &self.nodes[i];
        let bucket = self.nodes[target].owner.bucket().clone();
        let digest = bucket.digest();
        if node.ledger.is_ended(&digest) {
            return Ok(());
        }
        let next = node.ledger.next_seq(&digest).unwrap();
        let pending = node.seen.get(&digest).filter(|b| b.seq == next).cloned();
        let last_seq = match &pending {
            Some(batch) => Some(batch.seq),
            None => next.checked_sub(1),
        };
        let freeze = Freeze::new(node.key, bucket, last_seq, pending);
        for to in members {
            let request = Request::Freeze(freeze.clone());
            self.bag.push(Msg::Request {
                to,
                request,
                collector: i,
                attempts: 0,
            });
        }
        Ok(())
    }

    fn transfer(&mut self) -> Check {
        let from = self.rng.below(self.nodes.len());
        let to = self.rng.below(self.nodes.len());
        if from == to || !self.nodes[from].up {
            return Ok(());
        }
        let to_bucket = self.nodes[to].owner.bucket().clone();
        let node = &mut self.nodes[from];
        let _ = node
            .owner
            .request_transfer(&node.ledger, to_bucket, 10 * (1 + self.rng.below(3) as u64));
        Ok(())
    }

    fn revoke(&mut self) -> Check {
        let (_, attestations) = &self.claimants[self.rng.below(self.claimants.len())];
        let id = attestations[0];
        let revoked_at = self.now.saturating_sub(self.rng.below(3_000) as u64);
        self.creds.revocations.entry(id).or_insert(revoked_at);
        Ok(())
    }

    fn sync_one(&mut self) -> Check {
        let i = self.rng.below(self.nodes.len());
        if !self.nodes[i].up {
            return Ok(());
        }
        let certs: Vec<Certificate> = self.registry.values().cloned().collect();
        for cert in certs {
            self.apply_at(i, cert)?;
        }
        Ok(())
    }

    fn check_invariants(&mut self) -> Check {
        ensure!(
            self,
            self.oracle.waiting_len() == 0,
            "the oracle holds certificates it cannot apply"
        );
        let report = self.oracle.liquidity_report(&self.dist.id, &self.creds);
        ensure!(self, report.is_ok(), "oracle liquidity: {report:?}");
        let report = report.unwrap();
        let whole = &report.distribution;
        let (spent, available, stranded) = (whole.spent, whole.available, whole.stranded);
        ensure!(
            self,
            spent <= self.dist.total,
            "distribution overspent: {spent} > {}",
            self.dist.total
        );
        ensure!(
            self,
            whole.transferred_in == whole.transferred_out,
            "transfers in != out"
        );
        ensure!(
            self,
            spent + available + stranded == self.dist.total,
            "conservation: spent {spent} + available {available} + stranded {stranded} != {}",
            self.dist.total
        );
        for (region, t) in &report.regions {
            ensure!(
                self,
                t.share + t.transferred_in == t.spent + t.transferred_out + t.available + t.stranded,
                "region {region} conservation: {t:?}"
            );
        }
        for l in &report.buckets {
            ensure!(
                self,
                l.spent + l.transferred_out <= l.escrow,
                "bucket over its escrow: {l:?}"
            );
            ensure!(
                self,
                l.escrow >= l.share + l.transferred_in,
                "escrow below share + credits: {l:?}"
            );
        }
        let balances = self.oracle.recipient_balances(&self.creds);
        ensure!(self, balances.is_ok(), "recipient balances: {balances:?}");
        let credited: u64 = balances.unwrap().values().sum();
        ensure!(
            self,
            credited + whole.disputed == spent,
            "credited {credited} + disputed {} != spent {spent}",
            whole.disputed
        );
        for i in std::mem::take(&mut self.dirty) {
            let node = &self.nodes[i];
            let liquidity = node.ledger.liquidity(&self.dist.id, &self.creds);
            ensure!(self, liquidity.is_ok(), "node {i} liquidity inconsistent");
            // The escrow a voter or owner judges by is the one the report derives.
            for bucket in liquidity.unwrap() {
                let escrow = node.ledger.escrow(&bucket.bucket).unwrap();
                ensure!(
                    self,
                    escrow == bucket.escrow,
                    "node {i}: escrow {escrow} but the liquidity report says {}",
                    bucket.escrow
                );
            }
        }
        Ok(())
    }

    /// After the storm: everyone up, everything delivered; all nodes must agree with the oracle.
    fn heal(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.restart(i);
            }
        }
        let certs: Vec<Certificate> = self.registry.values().cloned().collect();
        for i in 0..self.nodes.len() {
            for cert in &certs {
                self.apply_at(i, cert.clone())?;
            }
            ensure!(
                self,
                self.nodes[i].ledger.waiting_len() == 0,
                "node {i} still waits after heal"
            );
            ensure!(
                self,
                self.nodes[i].ledger.state_digest() == self.oracle.state_digest(),
                "node {i} disagrees with the certified state after heal"
            );
        }
        Ok(())
    }
}

/// The variant name of a refusal, for the counters.
fn variant(refusal: &impl std::fmt::Debug) -> String {
    let text = format!("{refusal:?}");
    text.split([' ', '(', '{']).next().unwrap_or_default().to_owned()
}

fn owner_config() -> OwnerConfig {
    OwnerConfig {
        batch_claims_max: 3,
        clock_skew_ms: SKEW,
    }
}

fn run_seed(seed: u64, steps: usize, profile: Profile) -> Result<World, String> {
    let mut world = World::new(seed, profile);
    match catch_unwind(AssertUnwindSafe(|| world.run(steps))) {
        Ok(Ok(())) => Ok(world),
        Ok(Err(message)) => Err(message),
        Err(_) => Err(format!("seed {seed}: panicked (replay with SIM_SEED={seed})")),
    }
}

#[test]
fn sim_random_interleavings_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => (0..200).collect(),
    };
    let mut certificates = 0;
    let mut freezes = 0;
    let mut claims = 0;
    let mut equivocations = 0;
    let mut disputed = 0;
    let mut stranded = 0;
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    for seed in seeds {
        match run_seed(seed, 300, STORM) {
            Ok(world) => {
                certificates += world.registry.len();
                freezes += world
                    .registry
                    .values()
                    .filter(|c| matches!(c.object, CertifiedObject::Freeze(_)))
                    .count();
                claims += world.funded_slots.len();
                let liquidity = world.oracle.liquidity(&world.dist.id, &world.creds).unwrap();
                disputed += liquidity.iter().map(|l| l.disputed).sum::<u64>();
                stranded += liquidity.iter().map(|l| l.stranded).sum::<u64>();
                equivocations += world.equivocations;
                for (what, n) in world.stats {
                    *stats.entry(what).or_insert(0) += n;
                }
            }
            Err(message) => panic!("{message} (replay with SIM_SEED={seed})"),
        }
    }
    // The run must have exercised the protocol, not idled.
    assert!(certificates > 0 && claims > 0, "certs {certificates}, claims {claims}");
    eprintln!("sim outcomes: {stats:?}");
    eprintln!(
        "sim: {certificates} certificates, {freezes} freezes, {claims} funded claims, {equivocations} equivocations, \
         {disputed} disputed, {stranded} stranded"
    );
}

#[test]
fn sim_forging_owner_is_always_refused() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => (1_000..1_100).collect(),
    };
    let mut forged = 0;
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    for seed in seeds {
        match run_seed(seed, 300, FORGERY) {
            Ok(world) => {
                forged += world.equivocations;
                for (what, n) in world.stats {
                    *stats.entry(what).or_insert(0) += n;
                }
            }
            Err(message) => panic!("{message} (replay with SIM_SEED={seed})"),
        }
    }
    eprintln!("forgery outcomes: {stats:?}");
    assert!(forged > 0, "the forger never forged");
}
