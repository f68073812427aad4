//! The background refresh service.

pub(crate) mod plan;
