//! What the procedure interpreter needs of the session that calls it.

use futures::future::BoxFuture;
use tributary_syntax::Statement;

use crate::Result;
use crate::context::Context;
use crate::output::Output;

/// Runs the statements of a procedure body. The session implements it: the interpreter reads
/// and changes the session's [`Context`] (variables are evaluated by queries in it, COMMIT ends
/// its transaction) and hands each SQL statement back to the session's statement loop.
pub(crate) trait Runner: Send {
    /// The session's context.
    fn context(&mut self) -> &mut Context;

    /// Runs one statement of the body in the current transaction. Boxed, because a body may
    /// CALL another procedure.
    fn run(&mut self, statement: Statement) -> BoxFuture<'_, Result<Output>>;
}
