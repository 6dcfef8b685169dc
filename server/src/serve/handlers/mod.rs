//! Route handlers. Each one: read and validate (pure, `validate.rs`), tokenize
//! (`prompt.rs`), drive the engine (`generate.rs`), format (`sse.rs` for streams).
//! Errors are returned as [`ApiError`](super::error::ApiError), which renders itself.

pub mod chat;
pub mod completions;
pub mod health;
pub mod models;
pub mod responses;
pub mod tokenize;

use salvo::Request;

use super::error::ApiError;

/// The request body, bounded by `--max-body-bytes` (413 beyond it). A declared
/// `Content-Length` over the limit is refused before reading anything.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(salvo::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match req.payload_with_max_size(limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(salvo::http::ParseError::PayloadTooLarge) => Err(ApiError::PayloadTooLarge { limit }),
        Err(e) => Err(ApiError::invalid_no_param(format!("Could not read the request body: {e}"))),
    }
}
