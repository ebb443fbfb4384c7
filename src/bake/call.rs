//! `bake --call`: the frontend evaluates each target (`check`, `outline`, `targets`) instead
//! of building it, as `docker buildx bake --call` does. Nothing is planned, skipped, built,
//! delivered or recorded: each target's spec is the one its build would use, except that the
//! project targets it builds on are named by tag (as buildx names them), since none of them
//! is built first.

use std::collections::BTreeMap;

use futures_util::StreamExt;

use super::execute::{build_spec, Bases};
use super::{BakeError, BakePlan};
use crate::build::BuildResult;
use crate::progress::Progress;
use crate::project::Project;
use crate::transport::Daemon;

/// Evaluates subrequest `method` (`lint`, `outline`, `targets`) of every target in `names`,
/// at most `jobs` at a time, each with its name as the progress prefix. Returns every
/// target's answer, or why it could not be evaluated.
///
/// # Errors
/// The targets' dependencies cannot be resolved (a cycle, a missing target).
pub async fn call(
    daemon: &Daemon,
    project: &Project,
    names: &[String],
    method: &str,
    jobs: usize,
    progress: &Progress,
) -> Result<BTreeMap<String, Result<BuildResult, String>>, BakeError> {
    let plan = BakePlan {
        graph: crate::graph::plan(project, names)?,
        targets: BTreeMap::new(),
        early: Default::default(),
    };
    let mut answers = BTreeMap::new();
    let mut specs = Vec::new();
    for name in names {
        if let Some(why) = plan.graph.unavailable.get(name) {
            answers.insert(name.clone(), Err(format!("cannot be evaluated: {why}")));
            continue;
        }
        match build_spec(
            project,
            &plan,
            name,
            Bases::Tagged,
            // A subrequest makes no image: nothing to attest.
            &super::BakeOptions::default(),
        ) {
            Ok(mut spec) => {
                spec.call = Some(method.to_string());
                specs.push(spec);
            }
            Err(e) => {
                answers.insert(name.clone(), Err(e.to_string()));
            }
        }
    }
    let mut running = futures_util::stream::iter(specs.into_iter().map(|spec| async move {
        let r = crate::build::build(daemon, &spec, progress, Some(&spec.name)).await;
        (spec.name.clone(), r.map_err(|e| e.to_string()))
    }))
    .buffer_unordered(jobs.max(1));
    while let Some((name, r)) = running.next().await {
        answers.insert(name, r);
    }
    Ok(answers)
}
