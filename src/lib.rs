//! bk-build: build container images by talking to BuildKit over its gRPC control API.
//!
//! The data flow, one module per step: [`project`] (config) → [`graph`] → [`fingerprint`] →
//! [`build`] (session + solve, over [`transport`]) → [`progress`] → results.

pub mod bake;
pub mod build;
pub mod cli;
pub mod client;
pub mod digest;
pub mod fingerprint;
pub mod fs;
pub mod graph;
pub mod options;
pub mod pool;
pub mod progress;
pub mod project;
pub mod proto;
pub mod registry;
pub mod session;
pub mod timing;
pub mod transport;
