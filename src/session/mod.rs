//! The session tunnel over `Control.Session` and the services the daemon calls back.
pub mod auth;
pub mod secrets;
pub mod ssh;
