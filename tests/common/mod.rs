//! Shared helpers for integration tests. Each test binary uses a subset of them.
#![allow(dead_code)]

pub mod broker;
pub mod daemon;
