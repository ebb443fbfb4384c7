//! Turning an address into a gRPC channel to BuildKit.
