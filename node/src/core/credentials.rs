//! Credentials: issuer grants, attestations, revocations and their status.
//!
//! `CredentialBook` is the pure state machine the node's actor owns. It is fed
//! verified envelopes (signatures are checked upstream, in batches) and answers
//! whether each is new, a duplicate, or invalid with a precise reason. A
//! revocation that arrives before its attestation is kept and applied when the
//! attestation comes, so arrival order never changes the outcome.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use credence_proto::v1 as pb;
use prost::Message;

use super::envelope::{Kind, ObjectId, Verified};
use super::limits::{ATTESTATION_DATA_MAX_BYTES, REASON_MAX_BYTES, SCHEMA_MAX_BYTES};
use super::{Millis, PublicKey};

/// Most revocations held while waiting for their attestation. Only granted
/// issuers can create them, so this bounds a misbehaving issuer, not the public.
pub const PENDING_REVOCATIONS_MAX: usize = 100_000;

/// Settings that all honest nodes share (from the genesis).
#[derive(Clone, Debug)]
pub struct CredentialRules {
    /// How far in the future an `issued_at` may lie.
    pub max_clock_skew_ms: Millis,
    /// Keys allowed to sign issuer grants.
    pub operators: BTreeSet<PublicKey>,
}

/// The status of a credential at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialStatus {
    Valid,
    Revoked,
    Expired,
    Unknown,
}

impl CredentialStatus {
    pub fn name(self) -> &'static str {
        match self {
            CredentialStatus::Valid => "valid",
            CredentialStatus::Revoked => "revoked",
            CredentialStatus::Expired => "expired",
            CredentialStatus::Unknown => "unknown",
        }
    }
}

/// Why a credential object was refused. Deterministic: every honest node
/// refuses the same object for the same reason (except `FromTheFuture`, which
/// depends on the local clock and means "try again later").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("not a credential object: kind {0}")]
    WrongKind(&'static str),
    #[error("{kind} body does not decode: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("{field} must be a 32-byte key or id")]
    BadKeyField { field: &'static str },
    #[error("the envelope's signer is not the {role} named in the body")]
    SignerMismatch { role: &'static str },
    #[error("unknown schema {0:?}: no issuer is granted it")]
    UnknownSchema(String),
    #[error("issuer {issuer} is not granted schema {schema:?}")]
    NotGranted { issuer: String, schema: String },
    #[error("issued_at {issued_at} is more than the allowed skew ahead of this node's clock ({now})")]
    FromTheFuture { issued_at: Millis, now: Millis },
    #[error("expires_at {expires_at} is not after issued_at {issued_at}")]
    ExpiresBeforeIssued { issued_at: Millis, expires_at: Millis },
    #[error("{field} is {size} bytes, over the {max}-byte cap")]
    FieldTooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("only the attestation's issuer may revoke it")]
    NotTheIssuer,
    #[error("the revoker is not an issuer of this network")]
    UnknownRevoker,
    #[error("the signer is not an operator of this network")]
    NotAnOperator,
    #[error(transparent)]
    Operator(#[from] crate::core::validator::OperatorError),
    #[error("too many revocations are waiting for their attestations ({0}); try again later")]
    PendingFull(usize),
}

impl CredentialError {
    /// True when the object is bad in itself (the sender is at fault), false
    /// when it may become acceptable later or depends on local limits.
    pub fn is_sender_fault(&self) -> bool {
        !matches!(
            self,
            CredentialError::FromTheFuture { .. } | CredentialError::PendingFull(_)
        )
    }
}

/// What applying an object did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New and stored.
    New,
    /// Already held; nothing changed.
    Duplicate,
}

/// An attestation this node holds.
#[derive(Clone, Debug)]
pub struct AttestationRecord {
    pub id: ObjectId,
    pub issuer: PublicKey,
    pub subject: PublicKey,
    pub schema: String,
    pub data: Vec<u8>,
    pub issued_at: Millis,
    pub expires_at: Millis,
    pub learned_at: Millis,
    /// The envelope as received (voters are handed it with a claim's batch).
    pub raw: Vec<u8>,
}

/// A revocation this node holds.
#[derive(Clone, Debug)]
pub struct RevocationRecord {
    pub id: ObjectId,
    pub issuer: PublicKey,
    pub attestation_id: ObjectId,
    pub revoked_at: Millis,
    pub reason: String,
    pub learned_at: Millis,
}

/// A credential and its status at one instant.
#[derive(Clone, Debug)]
pub struct CredentialView {
    pub status: CredentialStatus,
    pub attestation: Option<AttestationRecord>,
    pub revocation: Option<RevocationRecord>,
}

/// Grants, attestations and revocations known to this node.
#[derive(Debug)]
pub struct CredentialBook {
    rules: CredentialRules,
    /// (issuer, schema) → (granted, granted_at, grant id). The latest grant
    /// wins; ties break on the larger id so every node agrees.
    grants: BTreeMap<(PublicKey, String), (bool, Millis, ObjectId)>,
    /// Grants fixed by the genesis; a grant object cannot override them.
    genesis_grants: BTreeSet<(PublicKey, String)>,
    attestations: HashMap<ObjectId, AttestationRecord>,
    /// The earliest revocation of each attestation.
    revocations: HashMap<ObjectId, RevocationRecord>,
    /// Revocations that arrived before their attestation, by attestation id.
    pending: HashMap<ObjectId, Vec<RevocationRecord>>,
    pending_len: usize,
    by_subject: HashMap<PublicKey, Vec<ObjectId>>,
    /// Ids of every object applied (attestations, revocations, grants).
    seen: std::collections::HashSet<ObjectId>,
}

impl CredentialBook {
    /// A book with the genesis grants (issuer, schema) in force.
    pub fn new(rules: CredentialRules, genesis_grants: impl IntoIterator<Item = (PublicKey, String)>) -> Self {
        let genesis_grants: BTreeSet<_> = genesis_grants.into_iter().collect();
        let grants = genesis_grants
            .iter()
            .map(|g| (g.clone(), (true, 0, ObjectId::default())))
            .collect();
        CredentialBook {
            rules,
            grants,
            genesis_grants,
            attestations: HashMap::new(),
            revocations: HashMap::new(),
            pending: HashMap::new(),
            pending_len: 0,
            by_subject: HashMap::new(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// True when the object with this id has been applied.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.seen.contains(id)
    }

    /// Number of attestations held.
    pub fn attestation_count(&self) -> usize {
        self.attestations.len()
    }

    /// Number of revocations applied to a known attestation.
    pub fn revocation_count(&self) -> usize {
        self.revocations.len()
    }

    /// Checks an object without changing anything: `Ok(())` when applying it
    /// would store it (or it is a duplicate).
    pub fn check(&self, now: Millis, object: &Verified) -> Result<(), CredentialError> {
        if self.contains(&object.id) {
            return Ok(());
        }
        match object.kind {
            Kind::Attestation => self.check_attestation(now, object).map(|_| ()),
            Kind::Revocation => self.check_revocation(object).map(|_| ()),
            Kind::IssuerGrant => self.check_grant(object).map(|_| ()),
            other => Err(CredentialError::WrongKind(other.name())),
        }
    }

    /// Applies a verified object learned at `now`.
    pub fn apply(&mut self, now: Millis, object: &Verified) -> Result<Applied, CredentialError> {
        self.apply_learned(now, now, object)
    }

    /// Applies an object that was first learned at `learned_at` (used when
    /// replaying the durable log on start, where `now` is later).
    pub fn apply_learned(
        &mut self,
        now: Millis,
        learned_at: Millis,
        object: &Verified,
    ) -> Result<Applied, CredentialError> {
        if self.contains(&object.id) {
            return Ok(Applied::Duplicate);
        }
        match object.kind {
            Kind::Attestation => {
                let mut record = self.check_attestation(now, object)?;
                record.learned_at = learned_at;
                if let Some(waiting) = self.pending.remove(&record.id) {
                    self.pending_len = self.pending_len.saturating_sub(waiting.len());
                    for revocation in waiting {
                        if revocation.issuer == record.issuer {
                            self.record_revocation(revocation);
                        }
                    }
                }
                self.by_subject.entry(record.subject).or_default().push(record.id);
                self.attestations.insert(record.id, record);
            }
            Kind::Revocation => {
                let mut record = self.check_revocation(object)?;
                record.learned_at = learned_at;
                if self.attestations.contains_key(&record.attestation_id) {
                    self.record_revocation(record);
                } else {
                    if self.pending_len >= PENDING_REVOCATIONS_MAX {
                        return Err(CredentialError::PendingFull(PENDING_REVOCATIONS_MAX));
                    }
                    self.pending_len = self.pending_len.saturating_add(1);
                    self.pending.entry(record.attestation_id).or_default().push(record);
                }
            }
            Kind::IssuerGrant => {
                let (key, granted, granted_at) = self.check_grant(object)?;
                let newer = match self.grants.get(&key) {
                    Some(&(_, at, id)) => (granted_at, object.id) > (at, id),
                    None => true,
                };
                if newer && !self.genesis_grants.contains(&key) {
                    self.grants.insert(key, (granted, granted_at, object.id));
                }
            }
            other => return Err(CredentialError::WrongKind(other.name())),
        }
        self.seen.insert(object.id);
        Ok(Applied::New)
    }

    /// The credential named by an attestation id, with its status at `now`.
    pub fn credential(&self, id: &ObjectId, now: Millis) -> CredentialView {
        let Some(attestation) = self.attestations.get(id) else {
            return CredentialView {
                status: CredentialStatus::Unknown,
                attestation: None,
                revocation: None,
            };
        };
        let revocation = self.revocations.get(id).cloned();
        let status = if revocation.is_some() {
            CredentialStatus::Revoked
        } else if attestation.expires_at != 0 && attestation.expires_at <= now {
            CredentialStatus::Expired
        } else {
            CredentialStatus::Valid
        };
        CredentialView {
            status,
            attestation: Some(attestation.clone()),
            revocation,
        }
    }

    /// Every credential of one subject, oldest first.
    pub fn credentials_of(&self, subject: &PublicKey, now: Millis) -> Vec<CredentialView> {
        self.by_subject
            .get(subject)
            .map(|ids| ids.iter().map(|id| self.credential(id, now)).collect())
            .unwrap_or_default()
    }

    /// True when some issuer is currently granted this schema.
    pub fn schema_known(&self, schema: &str) -> bool {
        self.grants
            .iter()
            .any(|((_, s), (granted, _, _))| *granted && s == schema)
    }

    /// True when the issuer may attest under the schema now.
    pub fn is_granted(&self, issuer: &PublicKey, schema: &str) -> bool {
        self.grants
            .get(&(*issuer, schema.to_string()))
            .is_some_and(|(granted, _, _)| *granted)
    }

    fn is_issuer(&self, key: &PublicKey) -> bool {
        self.grants.keys().any(|(issuer, _)| issuer == key)
    }

    fn record_revocation(&mut self, record: RevocationRecord) {
        // Keep the earliest revocation: it decides disputes.
        match self.revocations.get(&record.attestation_id) {
            Some(existing) if (existing.revoked_at, existing.id) <= (record.revoked_at, record.id) => {}
            _ => {
                self.revocations.insert(record.attestation_id, record);
            }
        }
    }

    fn check_attestation(&self, now: Millis, object: &Verified) -> Result<AttestationRecord, CredentialError> {
        let body = pb::Attestation::decode(object.body.as_slice()).map_err(|e| CredentialError::Malformed {
            kind: "attestation",
            reason: e.to_string(),
        })?;
        let issuer = key_field(&body.issuer, "issuer")?;
        let subject = key_field(&body.subject, "subject")?;
        if issuer != object.signer {
            return Err(CredentialError::SignerMismatch { role: "issuer" });
        }
        if body.schema.len() > SCHEMA_MAX_BYTES {
            return Err(CredentialError::FieldTooLarge {
                field: "schema",
                size: body.schema.len(),
                max: SCHEMA_MAX_BYTES,
            });
        }
        if body.data.len() > ATTESTATION_DATA_MAX_BYTES {
            return Err(CredentialError::FieldTooLarge {
                field: "data",
                size: body.data.len(),
                max: ATTESTATION_DATA_MAX_BYTES,
            });
        }
        if !self.schema_known(&body.schema) {
            return Err(CredentialError::UnknownSchema(body.schema));
        }
        if !self.is_granted(&issuer, &body.schema) {
            return Err(CredentialError::NotGranted {
                issuer: hex::encode(issuer),
                schema: body.schema,
            });
        }
        if body.issued_at > now.saturating_add(self.rules.max_clock_skew_ms) {
            return Err(CredentialError::FromTheFuture {
                issued_at: body.issued_at,
                now,
            });
        }
        if body.expires_at != 0 && body.expires_at <= body.issued_at {
            return Err(CredentialError::ExpiresBeforeIssued {
                issued_at: body.issued_at,
                expires_at: body.expires_at,
            });
        }
        Ok(AttestationRecord {
            id: object.id,
            issuer,
            subject,
            schema: body.schema,
            data: body.data,
            issued_at: body.issued_at,
            expires_at: body.expires_at,
            learned_at: now,
            raw: object.raw.clone(),
        })
    }

    fn check_revocation(&self, object: &Verified) -> Result<RevocationRecord, CredentialError> {
        let body = pb::Revocation::decode(object.body.as_slice()).map_err(|e| CredentialError::Malformed {
            kind: "revocation",
            reason: e.to_string(),
        })?;
        let issuer = key_field(&body.issuer, "issuer")?;
        let attestation_id = ObjectId(key_field(&body.attestation_id, "attestation_id")?);
        if issuer != object.signer {
            return Err(CredentialError::SignerMismatch { role: "issuer" });
        }
        if body.reason.len() > REASON_MAX_BYTES {
            return Err(CredentialError::FieldTooLarge {
                field: "reason",
                size: body.reason.len(),
                max: REASON_MAX_BYTES,
            });
        }
        match self.attestations.get(&attestation_id) {
            Some(attestation) if attestation.issuer != issuer => return Err(CredentialError::NotTheIssuer),
            Some(_) => {}
            // Held until the attestation arrives; only issuers of this network
            // may park revocations, which bounds who can fill the waiting room.
            None if !self.is_issuer(&issuer) => return Err(CredentialError::UnknownRevoker),
            None => {}
        }
        Ok(RevocationRecord {
            id: object.id,
            issuer,
            attestation_id,
            revoked_at: body.revoked_at,
            reason: body.reason,
            learned_at: 0,
        })
    }

    fn check_grant(&self, object: &Verified) -> Result<((PublicKey, String), bool, Millis), CredentialError> {
        let body = pb::IssuerGrant::decode(object.body.as_slice()).map_err(|e| CredentialError::Malformed {
            kind: "issuer grant",
            reason: e.to_string(),
        })?;
        let operator = key_field(&body.operator, "operator")?;
        let issuer = key_field(&body.issuer, "issuer")?;
        if operator != object.signer {
            return Err(CredentialError::SignerMismatch { role: "operator" });
        }
        if !self.rules.operators.contains(&operator) {
            return Err(CredentialError::NotAnOperator);
        }
        if body.schema.is_empty() || body.schema.len() > SCHEMA_MAX_BYTES {
            return Err(CredentialError::FieldTooLarge {
                field: "schema",
                size: body.schema.len(),
                max: SCHEMA_MAX_BYTES,
            });
        }
        Ok(((issuer, body.schema), body.granted, body.granted_at))
    }
}

fn key_field(bytes: &[u8], field: &'static str) -> Result<[u8; 32], CredentialError> {
    bytes.try_into().map_err(|_| CredentialError::BadKeyField { field })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::{NetworkId, Unverified, decode, seal};
    use ed25519_dalek::SigningKey;

    const NOW: Millis = 1_000_000;
    const NET: NetworkId = NetworkId([5; 32]);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }
    fn pk(seed: u8) -> PublicKey {
        key(seed).verifying_key().to_bytes()
    }
    fn verified(raw: &[u8]) -> Verified {
        match decode(&NET, raw).and_then(Unverified::verify) {
            Ok(v) => v,
            Err(e) => panic!("test envelope invalid: {e}"),
        }
    }
    fn attestation(signer: u8, issuer: u8, schema: &str, issued_at: Millis, expires_at: Millis) -> Verified {
        let body = pb::Attestation {
            issuer: pk(issuer).to_vec(),
            subject: pk(50).to_vec(),
            schema: schema.into(),
            data: vec![],
            issued_at,
            expires_at,
            nonce: u64::from(signer) + issued_at,
        };
        verified(&seal(&NET, &key(signer), Kind::Attestation, body.encode_to_vec()).0)
    }
    fn revocation(signer: u8, issuer: u8, of: ObjectId) -> Verified {
        let body = pb::Revocation {
            issuer: pk(issuer).to_vec(),
            attestation_id: of.0.to_vec(),
            revoked_at: NOW,
            reason: "test".into(),
        };
        verified(&seal(&NET, &key(signer), Kind::Revocation, body.encode_to_vec()).0)
    }
    fn grant(signer: u8, issuer: u8, schema: &str, granted: bool, at: Millis) -> Verified {
        let body = pb::IssuerGrant {
            operator: pk(signer).to_vec(),
            issuer: pk(issuer).to_vec(),
            schema: schema.into(),
            granted,
            granted_at: at,
        };
        verified(&seal(&NET, &key(signer), Kind::IssuerGrant, body.encode_to_vec()).0)
    }
    /// Issuer 1 holds `demo` from the genesis; 9 is the operator.
    fn book() -> CredentialBook {
        CredentialBook::new(
            CredentialRules {
                max_clock_skew_ms: 30_000,
                operators: [pk(9)].into_iter().collect(),
            },
            [(pk(1), "demo".to_string())],
        )
    }

    /// Applies each object in turn and compares the outcome of the last one.
    fn check(objects: &[Verified], expected: Result<Applied, CredentialError>) {
        let mut b = book();
        let (last, before) = match objects.split_last() {
            Some(split) => split,
            None => panic!("no objects"),
        };
        for o in before {
            let _ = b.apply(NOW, o);
        }
        assert_eq!(b.apply(NOW, last), expected);
    }

    #[test]
    fn attestation_rules() {
        check(&[attestation(1, 1, "demo", NOW, 0)], Ok(Applied::New));
        check(
            &[attestation(1, 1, "demo", NOW, 0), attestation(1, 1, "demo", NOW, 0)],
            Ok(Applied::Duplicate),
        );
        check(
            &[attestation(2, 1, "demo", NOW, 0)],
            Err(CredentialError::SignerMismatch { role: "issuer" }),
        );
        check(
            &[attestation(1, 1, "nope", NOW, 0)],
            Err(CredentialError::UnknownSchema("nope".into())),
        );
        check(
            &[attestation(2, 2, "demo", NOW, 0)],
            Err(CredentialError::NotGranted {
                issuer: hex::encode(pk(2)),
                schema: "demo".into(),
            }),
        );
        check(
            &[attestation(1, 1, "demo", NOW + 30_001, 0)],
            Err(CredentialError::FromTheFuture {
                issued_at: NOW + 30_001,
                now: NOW,
            }),
        );
        check(
            &[attestation(1, 1, "demo", NOW, NOW)],
            Err(CredentialError::ExpiresBeforeIssued {
                issued_at: NOW,
                expires_at: NOW,
            }),
        );
    }

    #[test]
    fn revocation_rules() {
        let a = attestation(1, 1, "demo", NOW, 0);
        check(&[a.clone(), revocation(1, 1, a.id)], Ok(Applied::New));
        check(
            &[a.clone(), revocation(2, 1, a.id)],
            Err(CredentialError::SignerMismatch { role: "issuer" }),
        );
        check(
            &[grant(9, 2, "demo", true, 1), a.clone(), revocation(2, 2, a.id)],
            Err(CredentialError::NotTheIssuer),
        );
        check(&[revocation(3, 3, a.id)], Err(CredentialError::UnknownRevoker));
    }

    #[test]
    fn grant_rules() {
        check(&[grant(9, 2, "demo", true, 1)], Ok(Applied::New));
        check(&[grant(8, 2, "demo", true, 1)], Err(CredentialError::NotAnOperator));
        check(
            &[grant(9, 2, "other", true, 1), attestation(2, 2, "other", NOW, 0)],
            Ok(Applied::New),
        );
        check(
            &[
                grant(9, 2, "other", true, 1),
                grant(9, 2, "other", false, 2),
                attestation(2, 2, "other", NOW, 0),
            ],
            Err(CredentialError::UnknownSchema("other".into())),
        );
        // An older grant arriving late does not undo a newer withdrawal.
        check(
            &[
                grant(9, 2, "other", false, 2),
                grant(9, 2, "other", true, 1),
                grant(9, 3, "other", true, 1),
                attestation(2, 2, "other", NOW, 0),
            ],
            Err(CredentialError::NotGranted {
                issuer: hex::encode(pk(2)),
                schema: "other".into(),
            }),
        );
    }

    #[test]
    fn status_follows_revocation_and_expiry_in_any_order() {
        let a = attestation(1, 1, "demo", NOW, NOW + 100);
        let r = revocation(1, 1, a.id);
        for order in [[a.clone(), r.clone()], [r.clone(), a.clone()]] {
            let mut b = book();
            for o in &order {
                assert_eq!(b.apply(NOW, o), Ok(Applied::New));
            }
            assert_eq!(b.credential(&a.id, NOW).status, CredentialStatus::Revoked);
        }
        let mut b = book();
        assert_eq!(b.apply(NOW, &a), Ok(Applied::New));
        assert_eq!(b.credential(&a.id, NOW + 99).status, CredentialStatus::Valid);
        assert_eq!(b.credential(&a.id, NOW + 100).status, CredentialStatus::Expired);
        assert_eq!(b.credential(&ObjectId([0; 32]), NOW).status, CredentialStatus::Unknown);
        assert_eq!(b.credentials_of(&pk(50), NOW).len(), 1);
    }

    #[test]
    fn an_early_revocation_by_someone_else_does_not_revoke() {
        let a = attestation(1, 1, "demo", NOW, 0);
        let mut b = book();
        assert_eq!(b.apply(NOW, &grant(9, 2, "demo", true, 1)), Ok(Applied::New));
        assert_eq!(b.apply(NOW, &revocation(2, 2, a.id)), Ok(Applied::New));
        assert_eq!(b.apply(NOW, &a), Ok(Applied::New));
        assert_eq!(b.credential(&a.id, NOW).status, CredentialStatus::Valid);
    }
}
