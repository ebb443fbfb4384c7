//! Frontend subrequests (`--call check|outline|targets`) through BuildKit's gateway API.
//!
//! A plain `Control.Solve` keeps only the `frontend.*` keys of the frontend's result metadata
//! in its answer (BuildKit `solver/llbsolver/solver.go`), and a subrequest answers in
//! `result.json`, `result.txt`, `result.statuscode` and `version`. So, as buildx does
//! (`build/build.go`, through BuildKit's `client.Build`), the request becomes a *gateway build*:
//! `Control.Solve` without frontend or definition makes the daemon wait for this client, which
//! asks the Dockerfile frontend for the subrequest with `LLBBridge.Solve`
//! (`requestid=frontend.NAME`), reads the metadata, and ends the build with `LLBBridge.Return`.
//! Every gateway call names its build by the Solve ref in the `buildkit-controlapi-buildid`
//! metadata (BuildKit `client/buildid`).
//!
//! Owns that exchange only; the request's attributes and session come from the caller.

use std::collections::BTreeMap;

use tonic::transport::Channel;

use crate::proto::control::{control_client::ControlClient, SolveRequest};
use crate::proto::moby::buildkit::v1::frontend::{
    llb_bridge_client::LlbBridgeClient, Result as GatewayResult, ReturnRequest, RpcStatus,
    SolveRequest as GatewaySolveRequest,
};
use crate::session;

/// The gRPC metadata key that ties a gateway call to its Solve (BuildKit `client/buildid`).
const BUILD_ID_KEY: &str = "buildkit-controlapi-buildid";
/// Frontend capability buildx announces with a subrequest (`build/build.go`).
const SUBREQUESTS_CAP: &str = "moby.buildkit.frontend.subrequests+forward";
/// How long a failed subrequest waits for the daemon to end its Solve before dropping it.
const SOLVE_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Evaluates subrequest `name` (`lint`, `outline`, `targets`) of `req`'s frontend: `req` is
/// the Solve an ordinary build would send (its `frontend_attrs` and session); its exporters
/// and cache exports must already be empty. Returns the daemon's exporter response with the
/// subrequest's metadata added (values as UTF-8 text), as buildx merges them.
///
/// # Errors
/// The frontend's error (with BuildKit's typed details, e.g. the Dockerfile location), or the
/// daemon's refusal of the Solve.
pub(super) async fn call(
    channel: Channel,
    mut req: SolveRequest,
    name: &str,
) -> Result<BTreeMap<String, String>, tonic::Status> {
    let build_id = req.r#ref.clone();
    let frontend = std::mem::take(&mut req.frontend);
    let mut opts = req.frontend_attrs.clone();
    let caps = match opts.get("frontend.caps") {
        Some(c) if !c.is_empty() => format!("{c},{SUBREQUESTS_CAP}"),
        _ => SUBREQUESTS_CAP.to_string(),
    };
    opts.insert("frontend.caps".into(), caps);
    opts.insert("requestid".into(), format!("frontend.{name}"));
    // Not a build worth keeping in the daemon's history (buildx marks it internal too).
    req.internal = true;

    let mut control = ControlClient::new(channel.clone())
        .max_decoding_message_size(session::MAX_DECODE)
        .max_encoding_message_size(session::MAX_ENCODE);
    let mut bridge = LlbBridgeClient::new(channel)
        .max_decoding_message_size(session::MAX_DECODE)
        .max_encoding_message_size(session::MAX_ENCODE);

    let solve = control.solve(req);
    tokio::pin!(solve);
    let gateway = async {
        let asked = bridge
            .solve(with_build_id(
                GatewaySolveRequest {
                    frontend,
                    frontend_opt: opts,
                    allow_result_return: true,
                    allow_result_array_ref: true,
                    cache_imports: Vec::new(),
                },
                &build_id,
            )?)
            .await;
        // The Solve waits for this answer; an error goes back to it as the build's error.
        let ret = match &asked {
            Ok(resp) => ReturnRequest {
                result: Some(GatewayResult {
                    metadata: resp
                        .get_ref()
                        .result
                        .as_ref()
                        .map(|r| r.metadata.clone())
                        .unwrap_or_default(),
                }),
                error: None,
            },
            Err(status) => ReturnRequest {
                result: None,
                error: Some(rpc_status(status)),
            },
        };
        bridge.r#return(with_build_id(ret, &build_id)?).await?;
        asked.map(|r| r.into_inner().result.unwrap_or_default().metadata)
    };
    tokio::pin!(gateway);
    let mut solved = None;
    let metadata = tokio::select! {
        m = &mut gateway => m,
        // The daemon answered the Solve before the gateway finished: a refusal is the answer.
        r = &mut solve => {
            solved = Some(r?);
            gateway.await
        }
    };
    let metadata = match metadata {
        Ok(m) => m,
        Err(e) => {
            if solved.is_none() {
                // Give the daemon a moment to end the build it now knows failed; dropping
                // the Solve call cancels it otherwise.
                let _ = tokio::time::timeout(SOLVE_END_WAIT, &mut solve).await;
            }
            return Err(e);
        }
    };
    let solved = match solved {
        Some(r) => r,
        None => solve.await?,
    };
    let mut response: BTreeMap<String, String> =
        solved.into_inner().exporter_response.into_iter().collect();
    for (k, v) in metadata {
        response.insert(k, String::from_utf8_lossy(&v).into_owned());
    }
    Ok(response)
}

/// A gateway request tagged with the build it belongs to.
fn with_build_id<T>(msg: T, build_id: &str) -> Result<tonic::Request<T>, tonic::Status> {
    let mut req = tonic::Request::new(msg);
    let v = tonic::metadata::MetadataValue::try_from(build_id)
        .map_err(|_| tonic::Status::internal(format!("build ref {build_id:?} is not ASCII")))?;
    req.metadata_mut().insert(BUILD_ID_KEY, v);
    Ok(req)
}

/// `status` as the `google.rpc.Status` a `Return` carries, with BuildKit's typed details
/// (sources, stacks) passed on.
fn rpc_status(status: &tonic::Status) -> RpcStatus {
    let details = <RpcStatus as prost::Message>::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details,
    }
}
