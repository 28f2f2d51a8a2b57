//! The lines the proxy writes itself, not through `tracing` (whose fields cannot be arrays):
//! one JSON object per line on stdout, in the same envelope as the tracing lines
//! (`portcullis_contract::log::Envelope`: `timestamp`, `level`, `target`), so that one log
//! pipeline reads both.
//!
//! Each line is serialized first, then written with one `write_all` under the stdout lock, the
//! way the tracing formatter writes its own: lines from different threads never interleave.

use std::io::Write;
use std::time::SystemTime;

use portcullis_contract::log::{timestamp, Envelope};
use serde::Serialize;

/// The `level` of a line, spelled as the tracing formatter spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
        }
    }
}

/// `line` in its envelope, as the bytes of one log line (with its newline).
pub fn encode<T: Serialize>(level: Level, target: &str, line: &T) -> Vec<u8> {
    let envelope = Envelope {
        timestamp: timestamp(SystemTime::now()),
        level: level.as_str().to_string(),
        target: target.to_string(),
        line,
    };
    let mut bytes = serde_json::to_vec(&envelope).unwrap_or_else(|e| {
        // Only a map with non-string keys or a failing Serialize impl can fail; neither is in
        // the log schema. Say so rather than lose the line silently.
        format!(
            r#"{{"level":"ERROR","target":"{target}","event":"log_line_unwritable","error":"{e}"}}"#
        )
        .into_bytes()
    });
    bytes.push(b'\n');
    bytes
}

/// Writes `line` as one JSON line on stdout. A full or closed stdout loses the line (as the
/// tracing formatter would): logging never stops the data path.
pub fn write<T: Serialize>(level: Level, target: &str, line: &T) {
    let bytes = encode(level, target, line);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&bytes);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_contract::log::{FlowsDropped, FLOWS_DROPPED, FLOWS_TARGET, LOG_SCHEMA};

    #[test]
    fn a_line_is_one_json_object_with_the_envelope_first() {
        let line = FlowsDropped {
            event: FLOWS_DROPPED.into(),
            schema: LOG_SCHEMA,
            pod_namespace: "x".into(),
            pod: "a".into(),
            dropped: 3,
        };
        let bytes = encode(Level::Info, FLOWS_TARGET, &line);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        assert!(text.starts_with(r#"{"timestamp":""#), "{text}");
        let back: Envelope<FlowsDropped> = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back.level, "INFO");
        assert_eq!(back.target, FLOWS_TARGET);
        assert_eq!(back.line, line);
        // RFC 3339, UTC, microseconds: what the tracing formatter writes.
        assert_eq!(back.timestamp.len(), "2026-12-08T03:00:00.000000Z".len());
        assert!(back.timestamp.ends_with('Z'));
    }
}
