//! [`Cursor`]: where a follower is in the streams it reads.
//!
//! A cursor is the id of the last event-log entry delivered plus, for every session still
//! executing, the id of the last history entry delivered. It has a compact text form,
//! `1;<event-log id>;<session>=<history id>;...`, so it fits in an SSE `id:` line and comes
//! back in the browser's `Last-Event-ID` header. `;` and `=` never occur in session ids
//! (`[A-Za-z0-9_.-]`) or stream ids (`<ms>-<seq>`), so the text form needs no escaping.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ids::{EntryId, SessionId};

/// The version tag that starts every cursor string.
const CURSOR_VERSION: &str = "1";

/// How far a follower has read: the event log, and the history stream of each executing session.
///
/// Every [`crate::follow::Change`] carries the cursor just after it; hand the last one you
/// processed to [`crate::StateManager::follow`] to continue from there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Last delivered entry of `tatbot:events`.
    pub(crate) events: EntryId,
    /// Last delivered history entry of each session being tailed.
    pub(crate) history: BTreeMap<SessionId, EntryId>,
}

impl Cursor {
    /// The last delivered entry of the event log.
    pub fn events(&self) -> EntryId {
        self.events
    }

    /// The last delivered history entry of `session_id`, if that session is being tailed.
    pub fn history(&self, session_id: &SessionId) -> Option<EntryId> {
        self.history.get(session_id).copied()
    }

    /// The sessions whose history the cursor tracks.
    pub fn sessions(&self) -> impl Iterator<Item = &SessionId> {
        self.history.keys()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CURSOR_VERSION};{}", self.events)?;
        for (session_id, entry_id) in &self.history {
            write!(f, ";{session_id}={entry_id}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Cursor> {
        let mut parts = text.trim().split(';');
        if parts.next() != Some(CURSOR_VERSION) {
            return Err(Error::InvalidInput(format!(
                "{text:?} is not a follow cursor (expected \"{CURSOR_VERSION};<event id>;<session>=<id>...\")"
            )));
        }
        let events = parts
            .next()
            .ok_or_else(|| Error::InvalidInput(format!("follow cursor {text:?} has no event-log id")))?
            .parse()?;
        let mut history = BTreeMap::new();
        for part in parts {
            let (session_id, entry_id) = part
                .split_once('=')
                .ok_or_else(|| Error::InvalidInput(format!("follow cursor part {part:?} is not <session>=<id>")))?;
            history.insert(SessionId::new(session_id)?, entry_id.parse()?);
        }
        Ok(Cursor { events, history })
    }
}

impl Serialize for Cursor {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Cursor, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry ids order numerically, not as text, and print as Redis writes them.
    #[test]
    fn entry_ids_order_numerically() {
        let small: EntryId = "999-5".parse().unwrap();
        let big: EntryId = "1000-0".parse().unwrap();
        assert!(small < big);
        assert_eq!(big.to_string(), "1000-0");
        assert_eq!("7".parse::<EntryId>().unwrap(), EntryId { ms: 7, seq: 0 });
        assert!("x-1".parse::<EntryId>().is_err());
    }

    /// A cursor survives its text form, and malformed text is rejected with a reason.
    #[test]
    fn cursor_round_trips_as_text() {
        let mut cursor = Cursor {
            events: "1795626937000-3".parse().unwrap(),
            ..Cursor::default()
        };
        cursor.history.insert(
            SessionId::new("stroke_hog_1795626937").unwrap(),
            "1795626937001-0".parse().unwrap(),
        );
        cursor
            .history
            .insert(SessionId::new("stroke_eek.1_2").unwrap(), EntryId::ZERO);
        let text = cursor.to_string();
        assert_eq!(
            text,
            "1;1795626937000-3;stroke_eek.1_2=0-0;stroke_hog_1795626937=1795626937001-0"
        );
        assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        assert_eq!(serde_json::to_string(&cursor).unwrap(), format!("\"{text}\""));
        for bad in ["", "2;0-0", "1", "1;0-0;noequals", "1;0-0;a:b=0-0", "1;zz"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
