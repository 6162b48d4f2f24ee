//! The resource URIs: the fixed ones, the four templates, and parsing a URI into a [`Resource`].
//!
//! Every URI a client sends goes through [`parse`] before anything reaches Redis. Template
//! parameters are percent-decoded and then validated as a [`NodeId`] or [`SessionId`], whose
//! rules (1 to 64 characters of `[A-Za-z0-9_.-]`) exclude glob characters and `:`, or as a
//! [`ParamName`] (dotted segments of `[A-Za-z0-9_-]`, at most 128 bytes), so a URI can never
//! widen a `SCAN` pattern or reach another key's namespace. A URI that names nothing we serve
//! is [`UriError::Unknown`]; one whose parameter is invalid is [`UriError::InvalidId`], which
//! carries the library's explanation.

use percent_encoding::percent_decode_str;
use tatbot_state::{NodeId, ParamName, SessionId};

/// The system summary.
pub const STATUS: &str = "state://status";
/// The latest active session of the whole system.
pub const LATEST_PROGRESS: &str = "state://stroke/progress";
/// Every stored session.
pub const SESSIONS: &str = "state://sessions";
/// Every known node with its last heartbeat.
pub const NODES: &str = "state://nodes";
/// The effective Redis target and where each field came from.
pub const CONFIG: &str = "state://config";
/// The newest stored errors.
pub const ERRORS: &str = "state://errors";
/// Template of one session's progress.
pub const PROGRESS_TEMPLATE: &str = "state://stroke/progress/{session_id}";
/// Template of one node's health.
pub const HEALTH_TEMPLATE: &str = "state://health/{node_id}";
/// Every runtime parameter.
pub const PARAMS: &str = "state://params";
/// Template of one parameter with its declaration.
pub const PARAM_TEMPLATE: &str = "state://params/{name}";
/// Every robot's state snapshot.
pub const ROBOTS: &str = "state://robot";
/// Template of one node's robot state.
pub const ROBOT_TEMPLATE: &str = "state://robot/{node_id}";

/// What [`PROGRESS_TEMPLATE`] expands to, up to the session id.
const PROGRESS_PREFIX: &str = "state://stroke/progress/";
/// What [`HEALTH_TEMPLATE`] expands to, up to the node id.
const HEALTH_PREFIX: &str = "state://health/";
/// What [`PARAM_TEMPLATE`] expands to, up to the parameter name.
const PARAM_PREFIX: &str = "state://params/";
/// What [`ROBOT_TEMPLATE`] expands to, up to the node id.
const ROBOT_PREFIX: &str = "state://robot/";

/// A resource this server can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// [`STATUS`].
    Status,
    /// [`LATEST_PROGRESS`].
    LatestProgress,
    /// One session's progress ([`PROGRESS_TEMPLATE`]).
    Progress(SessionId),
    /// [`SESSIONS`].
    Sessions,
    /// One node's health ([`HEALTH_TEMPLATE`]).
    Health(NodeId),
    /// [`NODES`].
    Nodes,
    /// [`CONFIG`].
    Config,
    /// [`ERRORS`].
    Errors,
    /// [`PARAMS`].
    Params,
    /// One parameter ([`PARAM_TEMPLATE`]).
    Param(ParamName),
    /// [`ROBOTS`].
    Robots,
    /// One node's robot state ([`ROBOT_TEMPLATE`]).
    Robot(NodeId),
}

/// Why a URI names no resource.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// The URI matches no resource and no template.
    #[error(
        "unknown resource {0:?}; list the resources with resources/list and the templates with resources/templates/list"
    )]
    Unknown(String),
    /// The URI matches a template but its parameter is not a valid id or parameter name.
    #[error("{uri}: {source}")]
    InvalidId {
        /// The URI as sent.
        uri: String,
        /// The library's validation error, which says which rule was broken.
        source: Box<tatbot_state::Error>,
    },
}

impl Resource {
    /// The resource's URI.
    pub fn uri(&self) -> String {
        match self {
            Resource::Status => STATUS.to_owned(),
            Resource::LatestProgress => LATEST_PROGRESS.to_owned(),
            Resource::Progress(session_id) => progress_uri(session_id),
            Resource::Sessions => SESSIONS.to_owned(),
            Resource::Health(node_id) => health_uri(node_id),
            Resource::Nodes => NODES.to_owned(),
            Resource::Config => CONFIG.to_owned(),
            Resource::Errors => ERRORS.to_owned(),
            Resource::Params => PARAMS.to_owned(),
            Resource::Param(name) => param_uri(name),
            Resource::Robots => ROBOTS.to_owned(),
            Resource::Robot(node_id) => robot_uri(node_id),
        }
    }
}

/// `state://stroke/progress/{session_id}`.
pub fn progress_uri(session_id: &SessionId) -> String {
    format!("{PROGRESS_PREFIX}{session_id}")
}

/// `state://health/{node_id}`.
pub fn health_uri(node_id: &NodeId) -> String {
    format!("{HEALTH_PREFIX}{node_id}")
}

/// `state://robot/{node_id}`.
pub fn robot_uri(node_id: &NodeId) -> String {
    format!("{ROBOT_PREFIX}{node_id}")
}

/// `state://params/{name}`.
pub fn param_uri(name: &ParamName) -> String {
    format!("{PARAM_PREFIX}{name}")
}

/// True for the URIs that show parameters: [`PARAMS`] and every [`PARAM_TEMPLATE`] expansion.
pub fn shows_params(uri: &str) -> bool {
    uri == PARAMS || uri.starts_with(PARAM_PREFIX)
}

/// True for URIs whose content depends on heartbeats, which have no pub/sub event.
pub fn depends_on_heartbeats(uri: &str) -> bool {
    uri == STATUS || uri == NODES || uri.starts_with(HEALTH_PREFIX)
}

/// Parses a URI a client sent.
///
/// # Errors
///
/// [`UriError::Unknown`] when nothing matches, [`UriError::InvalidId`] when a template matches
/// but its (percent-decoded) parameter is not a valid id or parameter name.
pub fn parse(uri: &str) -> Result<Resource, UriError> {
    let fixed = match uri {
        STATUS => Some(Resource::Status),
        LATEST_PROGRESS => Some(Resource::LatestProgress),
        SESSIONS => Some(Resource::Sessions),
        NODES => Some(Resource::Nodes),
        CONFIG => Some(Resource::Config),
        ERRORS => Some(Resource::Errors),
        PARAMS => Some(Resource::Params),
        ROBOTS => Some(Resource::Robots),
        _ => None,
    };
    if let Some(resource) = fixed {
        return Ok(resource);
    }
    let invalid = |source| UriError::InvalidId {
        uri: uri.to_owned(),
        source: Box::new(source),
    };
    if let Some(raw) = uri.strip_prefix(PROGRESS_PREFIX) {
        return SessionId::new(percent_decode(raw))
            .map(Resource::Progress)
            .map_err(invalid);
    }
    if let Some(raw) = uri.strip_prefix(HEALTH_PREFIX) {
        return NodeId::new(percent_decode(raw)).map(Resource::Health).map_err(invalid);
    }
    if let Some(raw) = uri.strip_prefix(ROBOT_PREFIX) {
        return NodeId::new(percent_decode(raw)).map(Resource::Robot).map_err(invalid);
    }
    if let Some(raw) = uri.strip_prefix(PARAM_PREFIX) {
        return ParamName::new(percent_decode(raw))
            .map(Resource::Param)
            .map_err(invalid);
    }
    Err(UriError::Unknown(uri.to_owned()))
}

/// Decodes `%XX` escapes (RFC 3986); a `%` not followed by two hex digits is kept as it is.
///
/// Bytes that do not form UTF-8 become U+FFFD, which the id validation then rejects.
fn percent_decode(raw: &str) -> String {
    percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed URIs and templates parse, and a parsed resource gives its URI back.
    #[test]
    fn parses_and_round_trips() {
        for uri in [STATUS, LATEST_PROGRESS, SESSIONS, NODES, CONFIG, ERRORS, PARAMS] {
            assert_eq!(parse(uri).unwrap().uri(), uri);
        }
        let progress = parse("state://stroke/progress/stroke_hog_1795626937").unwrap();
        assert_eq!(
            progress,
            Resource::Progress(SessionId::new("stroke_hog_1795626937").unwrap())
        );
        assert_eq!(progress.uri(), "state://stroke/progress/stroke_hog_1795626937");
        assert_eq!(
            parse("state://health/hog").unwrap(),
            Resource::Health(NodeId::new("hog").unwrap())
        );
        assert_eq!(
            parse("state://health/rpi%2D1").unwrap(),
            Resource::Health(NodeId::new("rpi-1").unwrap())
        );
        assert_eq!(parse("state://robot").unwrap(), Resource::Robots);
        assert_eq!(
            parse("state://robot/hog").unwrap(),
            Resource::Robot(NodeId::new("hog").unwrap())
        );
        assert_eq!(parse("state://robot/hog").unwrap().uri(), "state://robot/hog");
        assert!(matches!(parse("state://robot/*"), Err(UriError::InvalidId { .. })));
        let param = parse("state://params/arms.goal_time_slow").unwrap();
        assert_eq!(param, Resource::Param(ParamName::new("arms.goal_time_slow").unwrap()));
        assert_eq!(param.uri(), "state://params/arms.goal_time_slow");
        assert_eq!(
            parse("state://params/arms%2Egoal-time").unwrap().uri(),
            "state://params/arms.goal-time"
        );
    }

    /// Bad template parameters are rejected with the library's reason, raw or percent-encoded.
    #[test]
    fn rejects_bad_ids() {
        let long = format!("state://health/{}", "a".repeat(300));
        let long_name = format!("state://params/{}", "a".repeat(300));
        for (uri, reason) in [
            ("state://health/*", "only letters"),
            ("state://health/a:b", "only letters"),
            ("state://health/a%3Ab", "only letters"),
            ("state://health/", "empty"),
            (long.as_str(), "longer than 64"),
            ("state://health/nöde", "only letters"),
            ("state://health/n%C3%B6de", "only letters"),
            ("state://health/%FF", "only letters"),
            ("state://stroke/progress/*", "only letters"),
            ("state://stroke/progress/", "empty"),
            ("state://params/*", "only letters"),
            ("state://params/a:b", "only letters"),
            ("state://params/a%3Ab", "only letters"),
            ("state://params/", "empty"),
            (long_name.as_str(), "longer than 128"),
            ("state://params/pär", "only letters"),
            ("state://params/arms..x", "empty segment"),
            ("state://params/.arms", "empty segment"),
            ("state://params/arms/x", "only letters"),
        ] {
            let err = parse(uri).unwrap_err();
            assert!(matches!(err, UriError::InvalidId { .. }), "{uri}: {err}");
            assert!(err.to_string().contains(reason), "{uri}: {err}");
        }
    }

    /// URIs outside our scheme and paths are unknown, not invalid.
    #[test]
    fn unknown_uris() {
        for uri in [
            "state://nope",
            "file:///etc/passwd",
            "state://status/",
            "state://stroke",
            "state://params2",
            "state://param/arms.x",
            "",
        ] {
            assert!(matches!(parse(uri), Err(UriError::Unknown(_))), "{uri}");
        }
    }

    /// Malformed escapes stay as they are.
    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41b"), "aAb");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("stroke%5Fhog%2D1"), "stroke_hog-1");
        assert_eq!(percent_decode("%C3%A9%FF"), "é\u{FFFD}");
    }
}
