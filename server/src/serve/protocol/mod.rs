//! The wire types of the API, shaped exactly as OpenAI's (and vLLM's for `/tokenize`),
//! with serde for the wire and salvo-oapi's `ToSchema` so `/openapi.json` describes the
//! real types.
//!
//! Requests deny unknown fields at the top level (OpenAI answers 400 "Unrecognized request
//! argument supplied"); fields we understand but do not implement are declared as
//! `Option<serde_json::Value>` so that validation can reject them by name.
//!
//! - [`common`] — errors, usage, `stop`, models, health, tokenize.
//! - [`chat`] — `/v1/chat/completions` request, response and stream chunk.
//! - [`completions`] — `/v1/completions`.
//! - [`responses`] — `/v1/responses` (request, response object, stream events).
//! - [`ws`] — the frames of `/v1/chat/ws`.
//! - `integer` — integer fields that take `2.0` (JSON Schema's integers).

pub mod chat;
pub mod common;
pub mod completions;
mod integer;
pub mod responses;
pub mod ws;

pub use chat::*;
pub use common::*;
pub use completions::*;
pub use responses::*;
