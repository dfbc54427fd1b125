//! The procedures a session is inside.

/// How deep the session is in procedure calls, and who owns the transaction.
#[derive(Debug, Default)]
pub(crate) struct CallStack {
    pub depth: usize,
    /// Set while the outermost CALL owns its transaction (it was not called inside a BEGIN
    /// block), so COMMIT and ROLLBACK in a body may end it.
    pub owns_transaction: bool,
}
