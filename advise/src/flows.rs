//! Reading flow records back from proxy logs: `kubectl logs` output, with or without
//! `--prefix`, mixed with every other line a proxy writes.

use std::io::BufRead;

use portcullis_contract::log::{FlowSummary, FlowsDropped, FLOWS_DROPPED, FLOW_SUMMARY};
use serde::Deserialize;
use thiserror::Error;

/// A line that says it is a flow record but cannot be read as one.
#[derive(Debug, Error)]
pub enum FlowReadError {
    #[error("{source_name}:{line}: a {FLOW_SUMMARY} line that does not read as one: {reason}")]
    Malformed {
        source_name: String,
        line: usize,
        reason: serde_json::Error,
    },
    #[error("{source_name}:{line}: flow record schema {found} is newer than this portcullis reads ({known}); use a newer portcullis")]
    NewerSchema {
        source_name: String,
        line: usize,
        found: u32,
        known: u32,
    },
    #[error("{source_name}: {0}", source_name = .1)]
    Io(std::io::Error, String),
}

/// What the logs held.
#[derive(Debug, Default)]
pub struct FlowLog {
    pub flows: Vec<FlowSummary>,
    /// `flow_records_dropped` lines: each pod's proxy says how many flows its bound lost.
    pub dropped: Vec<FlowsDropped>,
    /// Lines read in all.
    pub lines: usize,
}

#[derive(Deserialize)]
struct Head {
    event: Option<String>,
    schema: Option<u32>,
}

impl FlowLog {
    /// Reads every line of `reader`; lines that are not flow records are skipped, a flow record
    /// that does not parse is an error naming `source_name` and the line.
    pub fn read(&mut self, reader: impl BufRead, source_name: &str) -> Result<(), FlowReadError> {
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| FlowReadError::Io(e, source_name.to_string()))?;
            self.lines += 1;
            self.read_line(&line, source_name, index + 1)?;
        }
        Ok(())
    }

    fn read_line(
        &mut self,
        line: &str,
        source_name: &str,
        number: usize,
    ) -> Result<(), FlowReadError> {
        // `kubectl logs --prefix` puts `[pod/name/container] ` before the JSON.
        let Some(json) = line.find('{').map(|at| &line[at..]) else {
            return Ok(());
        };
        let Ok(head) = serde_json::from_str::<Head>(json) else {
            return Ok(());
        };
        let event = head.event.as_deref();
        if event != Some(FLOW_SUMMARY) && event != Some(FLOWS_DROPPED) {
            return Ok(());
        }
        let known = portcullis_contract::log::LOG_SCHEMA;
        if let Some(found) = head.schema.filter(|s| *s > known) {
            return Err(FlowReadError::NewerSchema {
                source_name: source_name.to_string(),
                line: number,
                found,
                known,
            });
        }
        let malformed = |reason| FlowReadError::Malformed {
            source_name: source_name.to_string(),
            line: number,
            reason,
        };
        if event == Some(FLOW_SUMMARY) {
            self.flows
                .push(serde_json::from_str(json).map_err(malformed)?);
        } else {
            self.dropped
                .push(serde_json::from_str(json).map_err(malformed)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = r#"{"event":"flow_summary","schema":1,"pod_namespace":"zoo","pod":"a-1","direction":"egress","protocol":"UDP","peer_ip":"10.0.0.9","port":53,"verdict":"allowed","count":2,"first_seen":"2026-12-08T03:00:00Z","last_seen":"2026-12-08T03:01:00Z"}"#;

    #[test]
    fn reads_flow_records_among_other_lines_and_kubectl_prefixes() {
        let text = format!(
            "plain text\n{{\"event\":\"connection_denied\",\"schema\":1}}\n[pod/a-1/portcullis-proxy] {FLOW}\n{FLOW}\n\
             {{\"event\":\"flow_records_dropped\",\"schema\":1,\"pod_namespace\":\"zoo\",\"pod\":\"a-1\",\"dropped\":7}}\n"
        );
        let mut log = FlowLog::default();
        log.read(text.as_bytes(), "logs.txt").expect("reads");
        assert_eq!(log.flows.len(), 2);
        assert_eq!(log.flows[0].port, 53);
        assert_eq!(log.dropped[0].dropped, 7);
        assert_eq!(log.lines, 5);
    }

    #[test]
    fn a_broken_flow_record_is_an_error_naming_file_and_line() {
        let text = "x\n{\"event\":\"flow_summary\",\"schema\":1,\"pod\":\"a\"}\n";
        let err = FlowLog::default()
            .read(text.as_bytes(), "logs.txt")
            .expect_err("must fail");
        assert!(
            err.to_string()
                .starts_with("logs.txt:2: a flow_summary line"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused_not_misread() {
        let text = FLOW.replace("\"schema\":1", "\"schema\":9");
        let err = FlowLog::default()
            .read(text.as_bytes(), "l")
            .expect_err("must fail");
        assert!(err.to_string().contains("schema 9 is newer"), "{err}");
    }
}
