//! A log shared by several instances, kept outside this process (PostgreSQL
//! with synchronous replication: the `phb-pglog` crate), which decides what
//! is committed. Each instance keeps its own `Store` as a verified local
//! copy of it: the writer appends a group to its local log only after the
//! shared log confirmed the group, and readers copy only what the shared log
//! has confirmed. So the local log is always a prefix of the shared one.
//!
//! The trait is here, beside the store, so the engine drives any shared log
//! without depending on a database client.

use crate::Append;
use phb_chain::{Hash, LogEntry};

/// The shared log's head as the writer role was taken: everything up to it
/// is durable (the role was taken in a synchronously replicated commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    /// The last sequence in the shared log.
    pub sequence: u64,
    /// Its entry hash (`GENESIS_HASH` for an empty log).
    pub hash: Hash,
    /// The writer epoch this instance now holds: every commit checks it, so
    /// a writer that lost the role (another took it) cannot extend the log.
    pub epoch: u64,
}

/// What a reader sees of the shared log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Everything up to this sequence is durable: a reader may copy it.
    pub sequence: u64,
    /// The address the current writer advertises, if any.
    pub writer: Option<String>,
}

/// Why a shared-log call failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedLogError {
    /// The database could not be reached or the call failed; after a commit,
    /// the outcome is unknown (the group may or may not be durable).
    #[error("the shared log is unavailable: {0}")]
    Unavailable(String),
    /// Another instance took the writer role: this one must stop writing.
    #[error("this instance no longer holds the writer role (epoch {epoch}): {detail}")]
    Fenced {
        /// The epoch this instance held.
        epoch: u64,
        /// What was seen.
        detail: String,
    },
    /// The shared log holds something a correct writer never writes (a gap,
    /// an undecodable entry, a local log that is not its prefix).
    #[error("the shared log disagrees: {0}")]
    Corrupt(String),
}

/// A log shared by several instances: one writer at a time (fenced by an
/// epoch), readers copying what it confirmed.
pub trait SharedLog: Send {
    /// Tries to take the writer role. `Ok(None)`: another instance has it.
    /// On success the previous writer is fenced and the head returned is
    /// durable; the caller copies up to it before writing anything.
    fn try_lead(&mut self, advertise: &str) -> Result<Option<Lead>, SharedLogError>;
    /// As writer: commits one group. `Ok` only once the group is durable in
    /// the shared log (confirmed by the synchronous standby). An error
    /// leaves the outcome unknown: the caller gives up the role, answers
    /// UNAVAILABLE and learns the outcome by reading the log.
    fn commit(&mut self, group: &[Append<'_>]) -> Result<(), SharedLogError>;
    /// As writer, when idle: records that every committed group is
    /// durable, so readers may copy up to it.
    fn confirm(&mut self) -> Result<(), SharedLogError>;
    /// Gives up the writer role (if held).
    fn resign(&mut self);
    /// What readers may copy, and who writes.
    fn confirmed(&mut self) -> Result<Confirmed, SharedLogError>;
    /// Entries `after + 1 ..= through`, at most `max`, in order.
    fn read(
        &mut self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<LogEntry>, SharedLogError>;
}
