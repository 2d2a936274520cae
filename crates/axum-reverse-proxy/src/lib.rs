//! A reverse proxy for [axum] and [tower].
//!
//! Drop-in for the public API of axum-reverse-proxy 1.3, with correct HTTP proxy semantics.
#![warn(missing_docs, rust_2018_idioms, clippy::all)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod retry;
mod uri;

pub use error::{InvalidTarget, ProxyError};
pub use retry::{Retry, RetryLayer};
