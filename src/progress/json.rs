//! `--progress=rawjson`: each Status message as one JSON object per line, in the shape
//! `buildctl --progress=rawjson` prints (BuildKit's `client.SolveStatus`): lowercase field names
//! `vertexes`/`statuses`/`logs`/`warnings`, RFC 3339 timestamps, byte fields base64-encoded,
//! empty fields left out as Go's `omitempty` does. Two fields are ours: `target` (set in bake)
//! and `note` (bk-build's own messages); readers of the BuildKit shape ignore them.

use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning};
use crate::proto::pb::{Position, ProgressGroup, Range, SourceInfo};

/// Go's zero `time.Time`, written for timestamps the message did not carry.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct JsonStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vertexes: Vec<JsonVertex>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<JsonVertexStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    logs: Vec<JsonLog>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<JsonWarning>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonVertex {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    cached: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
    #[serde(
        default,
        rename = "progressGroup",
        skip_serializing_if = "Option::is_none"
    )]
    progress_group: Option<JsonProgressGroup>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonProgressGroup {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    weak: bool,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonVertexStatus {
    #[serde(default)]
    id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    vertex: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    total: i64,
    #[serde(default)]
    current: i64,
    #[serde(default = "zero_time")]
    timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonLog {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    vertex: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    stream: i64,
    #[serde(default, with = "b64")]
    data: Vec<u8>,
    #[serde(default = "zero_time")]
    timestamp: String,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonWarning {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    vertex: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    level: i64,
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    short: Vec<u8>,
    #[serde(default, with = "b64_list", skip_serializing_if = "Vec::is_empty")]
    detail: Vec<Vec<u8>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    url: String,
    #[serde(
        default,
        rename = "sourceInfo",
        skip_serializing_if = "Option::is_none"
    )]
    source_info: Option<JsonSourceInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    range: Vec<JsonRange>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonSourceInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    filename: String,
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    data: Vec<u8>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    language: String,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<JsonPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<JsonPosition>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct JsonPosition {
    #[serde(default, skip_serializing_if = "is_zero32")]
    line: i32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    character: i32,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn is_zero32(n: &i32) -> bool {
    *n == 0
}
fn zero_time() -> String {
    ZERO_TIME.to_string()
}

/// `[]byte` fields: Go's encoding/json writes them as standard base64.
pub(super) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_list {
    use base64::Engine as _;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(item))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

fn time(ts: Option<&Timestamp>) -> Option<String> {
    ts.map(Timestamp::to_string)
}

fn position(p: Option<&Position>) -> Option<JsonPosition> {
    p.map(|p| JsonPosition {
        line: p.line,
        character: p.character,
    })
}

fn vertex(v: &Vertex) -> JsonVertex {
    JsonVertex {
        digest: v.digest.clone(),
        inputs: v.inputs.clone(),
        name: v.name.clone(),
        started: time(v.started.as_ref()),
        completed: time(v.completed.as_ref()),
        cached: v.cached,
        error: v.error.clone(),
        progress_group: v
            .progress_group
            .as_ref()
            .map(|g: &ProgressGroup| JsonProgressGroup {
                id: g.id.clone(),
                name: g.name.clone(),
                weak: g.weak,
            }),
    }
}

fn vertex_status(s: &VertexStatus) -> JsonVertexStatus {
    JsonVertexStatus {
        id: s.id.clone(),
        vertex: s.vertex.clone(),
        name: s.name.clone(),
        total: s.total,
        current: s.current,
        timestamp: time(s.timestamp.as_ref()).unwrap_or_else(zero_time),
        started: time(s.started.as_ref()),
        completed: time(s.completed.as_ref()),
    }
}

fn vertex_log(l: &VertexLog) -> JsonLog {
    JsonLog {
        vertex: l.vertex.clone(),
        stream: l.stream,
        data: l.msg.clone(),
        timestamp: time(l.timestamp.as_ref()).unwrap_or_else(zero_time),
    }
}

fn vertex_warning(w: &VertexWarning) -> JsonWarning {
    JsonWarning {
        vertex: w.vertex.clone(),
        level: w.level,
        short: w.short.clone(),
        detail: w.detail.clone(),
        url: w.url.clone(),
        source_info: w.info.as_ref().map(|i: &SourceInfo| JsonSourceInfo {
            filename: i.filename.clone(),
            data: i.data.clone(),
            language: i.language.clone(),
        }),
        range: w
            .ranges
            .iter()
            .map(|r: &Range| JsonRange {
                start: position(r.start.as_ref()),
                end: position(r.end.as_ref()),
            })
            .collect(),
    }
}

/// One Status message as a JSON line (without the newline).
pub(crate) fn status_line(target: Option<&str>, msg: &StatusResponse) -> String {
    let doc = JsonStatus {
        target: target.map(str::to_string),
        note: None,
        vertexes: msg.vertexes.iter().map(vertex).collect(),
        statuses: msg.statuses.iter().map(vertex_status).collect(),
        logs: msg.logs.iter().map(vertex_log).collect(),
        warnings: msg.warnings.iter().map(vertex_warning).collect(),
    };
    to_line(&doc)
}

/// One of bk-build's own messages as a JSON line.
pub(crate) fn note_line(target: Option<&str>, text: &str) -> String {
    to_line(&JsonStatus {
        target: target.map(str::to_string),
        note: Some(text.to_string()),
        ..JsonStatus::default()
    })
}

fn to_line(doc: &JsonStatus) -> String {
    // Plain data with string keys cannot fail to serialize; an empty object is the safe
    // fallback should that ever change.
    serde_json::to_string(doc).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn parse_time(s: &str) -> Option<Timestamp> {
        (s != ZERO_TIME).then(|| Timestamp::from_str(s).unwrap())
    }
    fn parse_opt(s: &Option<String>) -> Option<Timestamp> {
        s.as_deref().and_then(parse_time)
    }
    fn pos(p: &Option<JsonPosition>) -> Option<Position> {
        p.as_ref().map(|p| Position {
            line: p.line,
            character: p.character,
        })
    }

    /// The inverse of `status_line`, for checking that nothing is lost on the way.
    fn parse_line(line: &str) -> (Option<String>, StatusResponse) {
        let doc: JsonStatus = serde_json::from_str(line).unwrap();
        let msg = StatusResponse {
            vertexes: doc
                .vertexes
                .iter()
                .map(|v| Vertex {
                    digest: v.digest.clone(),
                    inputs: v.inputs.clone(),
                    name: v.name.clone(),
                    cached: v.cached,
                    started: parse_opt(&v.started),
                    completed: parse_opt(&v.completed),
                    error: v.error.clone(),
                    progress_group: v.progress_group.as_ref().map(|g| ProgressGroup {
                        id: g.id.clone(),
                        name: g.name.clone(),
                        weak: g.weak,
                    }),
                })
                .collect(),
            statuses: doc
                .statuses
                .iter()
                .map(|s| VertexStatus {
                    id: s.id.clone(),
                    vertex: s.vertex.clone(),
                    name: s.name.clone(),
                    current: s.current,
                    total: s.total,
                    timestamp: parse_time(&s.timestamp),
                    started: parse_opt(&s.started),
                    completed: parse_opt(&s.completed),
                })
                .collect(),
            logs: doc
                .logs
                .iter()
                .map(|l| VertexLog {
                    vertex: l.vertex.clone(),
                    timestamp: parse_time(&l.timestamp),
                    stream: l.stream,
                    msg: l.data.clone(),
                })
                .collect(),
            warnings: doc
                .warnings
                .iter()
                .map(|w| VertexWarning {
                    vertex: w.vertex.clone(),
                    level: w.level,
                    short: w.short.clone(),
                    detail: w.detail.clone(),
                    url: w.url.clone(),
                    info: w.source_info.as_ref().map(|i| SourceInfo {
                        filename: i.filename.clone(),
                        data: i.data.clone(),
                        definition: None,
                        language: i.language.clone(),
                    }),
                    ranges: w
                        .range
                        .iter()
                        .map(|r| Range {
                            start: pos(&r.start),
                            end: pos(&r.end),
                        })
                        .collect(),
                })
                .collect(),
        };
        (doc.target, msg)
    }

    fn ts(secs: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: secs,
            nanos,
        })
    }

    fn sample() -> StatusResponse {
        StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:aaa".into(),
                inputs: vec!["sha256:bbb".into()],
                name: "[2/2] RUN make".into(),
                cached: false,
                started: ts(1_700_000_000, 123_456_789),
                completed: ts(1_700_000_001, 500_000_000),
                error: String::new(),
                progress_group: Some(ProgressGroup {
                    id: "g".into(),
                    name: "layers".into(),
                    weak: true,
                }),
            }],
            statuses: vec![VertexStatus {
                id: "transferring context:".into(),
                vertex: "sha256:aaa".into(),
                name: String::new(),
                current: 2048,
                total: 0,
                timestamp: ts(1_700_000_001, 0),
                started: ts(1_700_000_000, 0),
                completed: None,
            }],
            logs: vec![VertexLog {
                vertex: "sha256:aaa".into(),
                timestamp: ts(1_700_000_001, 1000),
                stream: 2,
                msg: b"binary \xff\x00 ok\n".to_vec(),
            }],
            warnings: vec![VertexWarning {
                vertex: "sha256:aaa".into(),
                level: 1,
                short: b"JSONArgsRecommended".to_vec(),
                detail: vec![b"use JSON".to_vec(), b"really".to_vec()],
                url: "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/".into(),
                info: Some(SourceInfo {
                    filename: "Dockerfile".into(),
                    data: b"FROM x\nCMD y\n".to_vec(),
                    definition: None,
                    language: "Dockerfile".into(),
                }),
                ranges: vec![Range {
                    start: Some(Position {
                        line: 2,
                        character: 0,
                    }),
                    end: Some(Position {
                        line: 2,
                        character: 5,
                    }),
                }],
            }],
        }
    }

    #[test]
    fn a_status_round_trips_through_a_json_line() {
        let msg = sample();
        let line = status_line(Some("app"), &msg);
        assert!(!line.contains('\n'));
        let (target, back) = parse_line(&line);
        assert_eq!(target.as_deref(), Some("app"));
        assert_eq!(back, msg);
    }

    #[test]
    fn field_names_and_encodings_follow_buildctl() {
        let line = status_line(None, &sample());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("target").is_none());
        assert_eq!(
            v["vertexes"][0]["started"],
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(v["vertexes"][0]["progressGroup"]["weak"], true);
        assert!(v["vertexes"][0].get("cached").is_none());
        assert_eq!(v["statuses"][0]["id"], "transferring context:");
        assert!(v["statuses"][0].get("total").is_none());
        assert_eq!(v["logs"][0]["data"], "YmluYXJ5IP8AIG9rCg==");
        assert_eq!(v["warnings"][0]["short"], "SlNPTkFyZ3NSZWNvbW1lbmRlZA==");
        assert_eq!(v["warnings"][0]["sourceInfo"]["filename"], "Dockerfile");
        assert_eq!(v["warnings"][0]["range"][0]["start"]["line"], 2);
        assert!(v["warnings"][0]["range"][0]["start"]
            .get("character")
            .is_none());
    }

    #[test]
    fn missing_timestamps_become_go_zero_times() {
        let msg = StatusResponse {
            logs: vec![VertexLog {
                vertex: "v".into(),
                msg: b"x".to_vec(),
                ..VertexLog::default()
            }],
            ..StatusResponse::default()
        };
        let v: serde_json::Value = serde_json::from_str(&status_line(None, &msg)).unwrap();
        assert_eq!(v["logs"][0]["timestamp"], ZERO_TIME);
        assert_eq!(parse_line(&status_line(None, &msg)).1, msg);
    }

    #[test]
    fn notes_are_tagged() {
        let v: serde_json::Value =
            serde_json::from_str(&note_line(Some("base"), "skip base (unchanged)")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"target": "base", "note": "skip base (unchanged)"})
        );
    }
}
