//! What a failure asks the caller to do next. Every module has its own error enum with
//! context in fields; each answers `recovery()` with one of these, and the runtime decides
//! from that answer, never from a message string.

/// The action a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A passing fault (broker unreachable, timeout): try the same thing again.
    Retry,
    /// The open transaction cannot commit: abort it, rewind the inputs to the last commit
    /// and process them again.
    AbortAndRewind,
    /// Another writer owns these partitions now ("migrated"): drop their tasks and do not
    /// retry the writes.
    GiveUpPartitions,
    /// Local state cannot be trusted: close the task, and restore it again.
    RestoreTask,
    /// Bad input from the user (a record, a file, a request): report it, do not retry.
    Reject,
    /// Nothing sensible is left to do: stop the process with a clear message.
    Fatal,
}
