//! The crate's error type.
//!
//! Messages do not repeat their source: callers print the chain (`{:#}` with anyhow).

use std::net::SocketAddr;

/// Why the MCP server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listener that is not on loopback was given no token.
    #[error(
        "refusing to serve MCP on {addr} without a token: a non-loopback address needs one (--token or TATBOT_MCP_TOKEN)"
    )]
    TokenRequired {
        /// The address that was to be served.
        addr: SocketAddr,
    },

    /// The token is the empty string, which would let every request through.
    #[error("the MCP token is empty")]
    EmptyToken,

    /// The client did not complete the MCP handshake (stdio or in-memory transports).
    #[error("MCP handshake failed")]
    Handshake(#[source] Box<rmcp::service::ServerInitializeError>),

    /// The listener or a transport failed.
    #[error("MCP transport failed")]
    Io(#[from] std::io::Error),
}
