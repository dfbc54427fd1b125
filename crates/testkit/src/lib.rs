//! Test support: an in-process Tributary server on a free loopback port, the real external
//! servers tests need (started on free loopback ports, stopped on drop), and sqllogictest
//! runners that execute the same `.slt` files in-process and over the wire.
//!
//! A missing external program is a test failure whose message says how to install it; tests
//! never skip silently.

mod external;
mod server;
mod slt;

pub use external::{
    KinesisFlavor, KinesisServer, Moto, Tansu, TextRows, delta_readers, free_port, python,
    read_delta, require_program,
};
pub use server::TestServer;
pub use slt::{run_slt_in_process, run_slt_over_wire, slt_files};

/// The repository root (for test data, scripts and .slt files).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}
