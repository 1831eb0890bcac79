//! Protocol rules a test build can break one at a time, so that a test can
//! prove the simulator notices each (the mutation tests in `sim/tests.rs`).
//! Outside tests [`mutated`] is a constant `false` and compiles away.

/// One broken rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// A voter's vote leaves without its lock record (nothing persisted).
    VoteWithoutLock,
    /// A voter votes for another object at a position it is locked on.
    IgnoreLocks,
    /// A voter accepts a batch whose `prev` is not the certified batch before it.
    PrevUnchecked,
    /// A voter accepts a claim whose home is another bucket.
    HomeUnchecked,
    /// A successor takes a bucket over without its owner being suspected.
    TakeoverWithoutSuspicion,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 5] = [
        Mutation::VoteWithoutLock,
        Mutation::IgnoreLocks,
        Mutation::PrevUnchecked,
        Mutation::HomeUnchecked,
        Mutation::TakeoverWithoutSuspicion,
    ];
}

#[cfg(test)]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Breaks `mutation` (or none) for the code run on this thread from now on.
#[cfg(test)]
pub fn set(mutation: Option<Mutation>) {
    ACTIVE.with(|active| active.set(mutation));
}

/// Whether `mutation` is broken on this thread.
#[cfg(test)]
pub fn mutated(mutation: Mutation) -> bool {
    ACTIVE.with(|active| active.get() == Some(mutation))
}

/// Whether `mutation` is broken: never, outside tests.
#[cfg(not(test))]
#[inline(always)]
pub const fn mutated(_mutation: Mutation) -> bool {
    false
}
