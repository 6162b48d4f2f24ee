//! `redis://` URLs: parsing, redacting the password for messages, and the percent-encoding of
//! the userinfo.

use std::net::Ipv6Addr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::config::layers::{parse_port, validate_host};
use crate::config::{DEFAULT_PORT, URL_FORM};

/// The endpoint a `redis://[user[:pass]@]host[:port][/0]` URL names (port 6379 when left out),
/// for commands that take a second server as a URL (`tatbot-state replay --into`).
///
/// # Errors
///
/// A one-line message naming the problem (scheme, database, host, port).
pub fn endpoint_from_url(url: &str) -> Result<crate::Endpoint, String> {
    let parsed = parse_redis_url(url).map_err(|problem| format!("{} {problem}", redact_url(url)))?;
    let mut endpoint = crate::Endpoint::new(parsed.host, parsed.port.unwrap_or(DEFAULT_PORT));
    endpoint.username = parsed.username;
    endpoint.password = parsed.password;
    Ok(endpoint)
}

/// The parts of a `redis://` URL.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParsedUrl {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

/// Parses `redis://[user[:pass]@]host[:port][/db]`; the error is the problem
/// text that follows the (redacted) URL in a message.
pub(super) fn parse_redis_url(url: &str) -> Result<ParsedUrl, String> {
    let bad = |detail: &str| format!("is not a redis URL: {detail}");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(URL_FORM))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => {}
        "rediss" => return Err(bad("TLS not supported (rediss://); use a redis:// URL")),
        _ => return Err(bad(&format!("scheme {scheme:?} not supported; {URL_FORM}"))),
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err(bad("query parameters and fragments are not supported"));
    }
    // Only database 0 exists in tatbot's layout; silently connecting to 0 when
    // the URL asked for another would hide a misconfiguration.
    let db = tail.strip_prefix('/').unwrap_or(tail);
    if !db.is_empty() {
        match db.parse::<u32>() {
            Ok(0) => {}
            Ok(n) => {
                return Err(bad(&format!("database {n} not supported (tatbot uses database 0)")));
            }
            Err(_) => return Err(bad(&format!("database {db:?} is not a number"))),
        }
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            let user = percent_decode(user).map_err(|d| bad(&format!("{d} in the username")))?;
            let pass = pass
                .map(percent_decode)
                .transpose()
                .map_err(|d| bad(&format!("{d} in the password")))?;
            (Some(user).filter(|u| !u.is_empty()), pass.filter(|p| !p.is_empty()))
        }
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (inner, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
        let ip = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| bad(&format!("{inner:?} is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| bad(URL_FORM))?),
        };
        (ip.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let host = validate_host(&host).map_err(|p| bad(&format!("host {host:?} {p}")))?;
    // An empty port (`host:`) means the scheme's default, as in RFC 3986.
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(parse_port(port).map_err(|p| bad(&format!("port {port:?} {p}")))?),
    };
    Ok(ParsedUrl {
        host,
        port,
        username,
        password,
    })
}

/// Replaces the password part of a URL-like value with `***` so that error
/// messages can show the rest.
pub(super) fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{prefix}{user}:***@{hostport}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// RFC 3986 unreserved characters are the only ones a URL's userinfo keeps as they are.
const USERINFO_KEEPS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Decodes `%XX` escapes; unlike a browser, a `%` without two hex digits after it is an error,
/// since a password with a stray `%` was most likely not encoded at all.
fn percent_decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(byte_idx, &byte)| {
        byte == b'%'
            && !bytes
                .get(byte_idx + 1..byte_idx + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err("bad percent-encoding");
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| "percent-encoding that is not UTF-8")
}

/// Percent-encodes everything except RFC 3986 unreserved characters, which is
/// always safe inside the userinfo of a URL.
pub(super) fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, USERINFO_KEEPS).to_string()
}

/// Wraps IPv6 literals in brackets for use before `:port`.
pub(super) fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

    /// The percent-encoding crate keeps the hand-written encoder's exact output (issue #12):
    /// only RFC 3986 unreserved characters stay, hex is upper case, UTF-8 is encoded by bytes;
    /// decoding still refuses a stray `%` and non-UTF-8 instead of guessing.
    #[test]
    fn percent_encoding_outputs() {
        assert_eq!(percent_encode("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(
            percent_encode("p@ss:w/rd% ?#[]!"),
            "p%40ss%3Aw%2Frd%25%20%3F%23%5B%5D%21"
        );
        assert_eq!(percent_encode("é\u{1F512}"), "%C3%A9%F0%9F%94%92");
        for text in ["abc-._~XYZ09", "p@ss:w/rd% ?#[]!", "é\u{1F512}", ""] {
            assert_eq!(percent_decode(&percent_encode(text)).as_deref(), Ok(text));
        }
        assert_eq!(percent_decode("s%40cret%2f"), Ok("s@cret/".to_owned()));
        assert_eq!(percent_decode("100%"), Err("bad percent-encoding"));
        assert_eq!(percent_decode("%4g"), Err("bad percent-encoding"));
        assert_eq!(percent_decode("%FF"), Err("percent-encoding that is not UTF-8"));
    }

    /// URL parsing handles users without passwords, bracketed IPv6, empty ports and percent-decoding.
    #[test]
    fn redis_url_parser_cases() {
        let parsed = parse_redis_url("REDIS://bob@[::1]:/").expect("parse");
        assert_eq!(
            parsed,
            ParsedUrl {
                host: "::1".to_string(),
                port: None,
                username: Some("bob".to_string()),
                password: None
            }
        );
        let parsed = parse_redis_url("redis://:p%3Aw%2F@eek.local:6390").expect("parse");
        assert_eq!(parsed.password.as_deref(), Some("p:w/"));
        assert_eq!(parsed.username, None);
        assert_eq!(parsed.port, Some(6390));
        assert!(parse_redis_url("redis://").is_err());
        assert!(parse_redis_url("redis://h?db=1").is_err());
    }

    /// IPv6 hosts are bracketed in the URL and the display, and userinfo is percent-encoded.
    #[test]
    fn ipv6_url_formatting_and_encoding() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            host: Some("fe80::1".to_string()),
            port: Some(6390),
            password: Some("p@ss:w/rd é".to_string()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.redis_url(), "redis://:p%40ss%3Aw%2Frd%20%C3%A9@[fe80::1]:6390/");
        assert_eq!(t.display_redacted(), "[fe80::1]:6390 (password set)");
        let round_trip = parse_redis_url(&t.redis_url()).expect("parse");
        assert_eq!(round_trip.password.as_deref(), Some("p@ss:w/rd é"));
        assert_eq!(round_trip.host, "fe80::1");
    }
}
