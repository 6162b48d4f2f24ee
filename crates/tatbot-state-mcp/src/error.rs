//! The crate's error type.
//!
//! Messages do not repeat their source: callers print the chain (`{:#}` with anyhow).

/// Why the MCP server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener may not be served as asked: off loopback without a token, or with a
    /// blank token.
    #[error(transparent)]
    Bind(#[from] tatbot_state::http::BindError),

    /// The client did not complete the MCP handshake (stdio or in-memory transports).
    #[error("MCP handshake failed")]
    Handshake(#[source] Box<rmcp::service::ServerInitializeError>),

    /// The listener or a transport failed.
    #[error("MCP transport failed")]
    Io(#[from] std::io::Error),
}
