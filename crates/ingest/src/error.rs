use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// The stream does not exist (or the credentials may not see it).
    #[error("stream \"{0}\" does not exist")]
    StreamNotFound(String),
    /// The source could not be reached or refused the request.
    #[error("could not read stream \"{stream}\": {reason}")]
    Source { stream: String, reason: String },
    /// Stored positions that this version cannot read back.
    #[error("invalid stream positions: {0}")]
    Positions(String),
    /// The Kafka cluster could not be reached, or refused the request.
    #[error("{0}")]
    Kafka(String),
}
