//! Turning a failed Solve's gRPC status into the text a user needs: the daemon's message and,
//! when BuildKit says which lines of which file caused it, an excerpt of that file with the
//! lines marked (as `docker buildx build` shows it).
//!
//! BuildKit attaches typed details to its errors inside `grpc-status-details-bin`: a
//! `google.rpc.Status` whose `details` are `Any`s. The source location is the `errdefs.Source`
//! message, sent with type URL `github.com/moby/buildkit/errdefs.Source+json` and encoded as
//! Go's encoding/json of the generated struct (not protobuf) — see BuildKit's
//! `util/grpcerrors` and `solver/errdefs`. A protobuf-encoded `errdefs.Source` is accepted too.
//! Details we do not know (stack traces, vertex digests, …) are ignored.

use serde::Deserialize;

use crate::proto::pb;

/// `google.rpc.Status`, the payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `errdefs.Source` (BuildKit `solver/errdefs/errdefs.proto`) in protobuf form.
#[derive(Clone, PartialEq, prost::Message)]
struct SourceProto {
    #[prost(message, optional, tag = "1")]
    info: Option<pb::SourceInfo>,
    #[prost(message, repeated, tag = "2")]
    ranges: Vec<pb::Range>,
}

/// `errdefs.Source` as Go's encoding/json writes it (the form BuildKit actually sends).
#[derive(Debug, Deserialize)]
struct SourceJson {
    #[serde(default)]
    info: Option<SourceInfoJson>,
    #[serde(default)]
    ranges: Vec<RangeJson>,
}

#[derive(Debug, Deserialize)]
struct SourceInfoJson {
    #[serde(default)]
    filename: String,
    #[serde(default, with = "super::json::b64")]
    data: Vec<u8>,
}

#[derive(Debug, Deserialize)]
struct RangeJson {
    #[serde(default)]
    start: Option<PositionJson>,
    #[serde(default)]
    end: Option<PositionJson>,
}

#[derive(Debug, Deserialize)]
struct PositionJson {
    // Releases built with gogo/protobuf spelled these with a capital letter.
    #[serde(default, alias = "Line")]
    line: i32,
}

/// A file excerpt to show: which file, its bytes, and the 1-based line ranges that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    filename: String,
    data: Vec<u8>,
    ranges: Vec<(i32, i32)>,
}

const SOURCE_JSON_URL_SUFFIX: &str = "errdefs.Source+json";
const SOURCE_PROTO_URL_SUFFIX: &str = "errdefs.Source";

/// A readable report of a failed Solve, ready to print as-is:
///
/// ```text
/// Dockerfile:3
/// --------------------
///    1 |     FROM busybox
///    2 |     COPY . /app
///    3 | >>> RUN false
/// --------------------
/// ERROR: failed to solve: process "/bin/sh -c false" did not complete successfully: exit code: 1
/// ```
///
/// The excerpt appears only when the daemon sent the source location in the status details.
pub fn describe_build_error(status: &tonic::Status) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for source in sources(status.details()) {
        if seen.contains(&source) {
            continue;
        }
        out.push_str(&excerpt(&source));
        seen.push(source);
    }
    out.push_str("ERROR: failed to solve: ");
    out.push_str(&status_text(status));
    out
}

/// The message, with the code named when it says more than "unknown" (as BuildKit's client
/// prints gRPC errors: `Unavailable: connection closed`).
fn status_text(status: &tonic::Status) -> String {
    use tonic::Code;
    let name = match status.code() {
        Code::Ok | Code::Unknown => return status.message().to_string(),
        Code::Cancelled => "Canceled",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    };
    format!("{name}: {}", status.message())
}

fn sources(details: &[u8]) -> Vec<Source> {
    if details.is_empty() {
        return Vec::new();
    }
    let Ok(rpc) = <RpcStatus as prost::Message>::decode(details) else {
        return Vec::new();
    };
    rpc.details.iter().filter_map(decode_source).collect()
}

fn decode_source(any: &prost_types::Any) -> Option<Source> {
    if any.type_url.ends_with(SOURCE_JSON_URL_SUFFIX) {
        let s: SourceJson = serde_json::from_slice(&any.value).ok()?;
        let info = s.info?;
        let ranges = s
            .ranges
            .iter()
            .filter_map(|r| {
                let start = r.start.as_ref()?.line;
                Some((start, r.end.as_ref().map_or(start, |e| e.line)))
            })
            .collect();
        Some(Source {
            filename: info.filename,
            data: info.data,
            ranges,
        })
    } else if any.type_url.ends_with(SOURCE_PROTO_URL_SUFFIX) {
        let s = <SourceProto as prost::Message>::decode(any.value.as_slice()).ok()?;
        let info = s.info?;
        let ranges = s
            .ranges
            .iter()
            .filter_map(|r| {
                let start = r.start.as_ref()?.line;
                Some((start, r.end.as_ref().map_or(start, |e| e.line)))
            })
            .collect();
        Some(Source {
            filename: info.filename,
            data: info.data,
            ranges,
        })
    } else {
        None
    }
}

/// The failing lines with two lines of context each side (one when several lines failed),
/// or nothing when the location does not fit the file.
fn excerpt(src: &Source) -> String {
    let text = String::from_utf8_lossy(&src.data);
    // A final newline ends the last line; it does not start an empty one worth showing.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let lines: Vec<&str> = text.split('\n').collect();
    let spans: Vec<(usize, usize)> = src
        .ranges
        .iter()
        .filter(|(s, _)| *s >= 1)
        .map(|&(s, e)| (s as usize, e.max(s) as usize))
        .collect();
    let (Some(first), Some(last)) = (
        spans.iter().map(|s| s.0).min(),
        spans.iter().map(|s| s.1).max(),
    ) else {
        return String::new();
    };
    if first > lines.len() {
        return String::new();
    }
    let last = last.min(lines.len());
    let context = if first == last { 2 } else { 1 };
    let from = first.saturating_sub(context).max(1);
    let to = (last + context).min(lines.len());

    let rule = "--------------------\n";
    let mut out = format!("{}:{first}\n{rule}", src.filename);
    for n in from..=to {
        let marked = spans.iter().any(|&(s, e)| s <= n && n <= e);
        let marker = if marked { ">>>" } else { "   " };
        let line = format!(" {n:>3} | {marker} {}", lines[n - 1]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use prost::Message as _;
    use tonic::Code;

    const DOCKERFILE: &str =
        "FROM busybox\nCOPY . /app\nRUN false\nRUN echo never\nCMD [\"sh\"]\nLABEL a=b\n";

    fn source_json(start: i32, end: i32) -> Vec<u8> {
        let data = base64::engine::general_purpose::STANDARD.encode(DOCKERFILE);
        format!(
            r#"{{"info":{{"filename":"Dockerfile","data":"{data}","language":"Dockerfile"}},"ranges":[{{"start":{{"line":{start}}},"end":{{"line":{end}}}}}]}}"#
        )
        .into_bytes()
    }

    fn status_with(details: Vec<prost_types::Any>) -> tonic::Status {
        let rpc = RpcStatus {
            code: 2,
            message: "ignored copy".into(),
            details,
        };
        tonic::Status::with_details(
            Code::Unknown,
            "process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
            rpc.encode_to_vec().into(),
        )
    }

    fn any(url: &str, value: Vec<u8>) -> prost_types::Any {
        prost_types::Any {
            type_url: url.into(),
            value,
        }
    }

    #[test]
    fn json_source_detail_gives_a_marked_excerpt() {
        let st = status_with(vec![
            any(
                "github.com/moby/buildkit/stack.Stack+json",
                b"{\"frames\":[]}".to_vec(),
            ),
            any(
                "github.com/moby/buildkit/errdefs.Source+json",
                source_json(3, 3),
            ),
            any(
                "github.com/moby/buildkit/errdefs.Vertex+json",
                b"{\"digest\":\"sha256:1\"}".to_vec(),
            ),
        ]);
        assert_eq!(
            describe_build_error(&st),
            "Dockerfile:3\n\
             --------------------\n\
             \x20  1 |     FROM busybox\n\
             \x20  2 |     COPY . /app\n\
             \x20  3 | >>> RUN false\n\
             \x20  4 |     RUN echo never\n\
             \x20  5 |     CMD [\"sh\"]\n\
             --------------------\n\
             ERROR: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
        );
    }

    #[test]
    fn failing_last_line_shows_the_lines_before_it() {
        let data = base64::engine::general_purpose::STANDARD
            .encode("FROM busybox\nCOPY . /app\nRUN false\n");
        let detail = format!(
            r#"{{"info":{{"filename":"Dockerfile","data":"{data}"}},"ranges":[{{"start":{{"line":3}},"end":{{"line":3}}}}]}}"#
        );
        let st = status_with(vec![any(
            "github.com/moby/buildkit/errdefs.Source+json",
            detail.into_bytes(),
        )]);
        assert_eq!(
            describe_build_error(&st),
            "Dockerfile:3\n\
             --------------------\n\
             \x20  1 |     FROM busybox\n\
             \x20  2 |     COPY . /app\n\
             \x20  3 | >>> RUN false\n\
             --------------------\n\
             ERROR: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
        );
    }

    #[test]
    fn multi_line_ranges_get_one_line_of_context_and_are_deduplicated() {
        let st = status_with(vec![
            any(
                "github.com/moby/buildkit/errdefs.Source+json",
                source_json(1, 2),
            ),
            any(
                "github.com/moby/buildkit/errdefs.Source+json",
                source_json(1, 2),
            ),
        ]);
        let text = describe_build_error(&st);
        assert!(
            text.starts_with(
                "Dockerfile:1\n--------------------\n   1 | >>> FROM busybox\n   2 | >>> COPY . /app\n   3 |     RUN false\n--------------------\nERROR:"
            ),
            "{text}"
        );
    }

    #[test]
    fn protobuf_encoded_source_is_understood_too() {
        let src = SourceProto {
            info: Some(pb::SourceInfo {
                filename: "build/Dockerfile".into(),
                data: DOCKERFILE.as_bytes().to_vec(),
                definition: None,
                language: "Dockerfile".into(),
            }),
            ranges: vec![pb::Range {
                start: Some(pb::Position {
                    line: 6,
                    character: 0,
                }),
                end: Some(pb::Position {
                    line: 6,
                    character: 9,
                }),
            }],
        };
        let st = status_with(vec![any(
            "type.googleapis.com/errdefs.Source",
            src.encode_to_vec(),
        )]);
        let text = describe_build_error(&st);
        assert!(text.starts_with("build/Dockerfile:6\n"), "{text}");
        assert!(text.ends_with("   6 | >>> LABEL a=b\n--------------------\nERROR: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"), "{text}");
    }

    #[test]
    fn no_details_or_garbage_gives_just_the_message() {
        let plain = tonic::Status::new(Code::Unknown, "boom");
        assert_eq!(describe_build_error(&plain), "ERROR: failed to solve: boom");
        let garbage =
            tonic::Status::with_details(Code::Unavailable, "gone", vec![0xff, 0x01].into());
        assert_eq!(
            describe_build_error(&garbage),
            "ERROR: failed to solve: Unavailable: gone"
        );
        let out_of_file = status_with(vec![any(
            "github.com/moby/buildkit/errdefs.Source+json",
            source_json(40, 40),
        )]);
        assert!(describe_build_error(&out_of_file).starts_with("ERROR: failed to solve: process"));
    }
}
