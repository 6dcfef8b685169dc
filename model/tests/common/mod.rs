//! Helpers the model crate's integration tests share: where the repository's data is, JSON
//! reference files, token-id arrays and greedy choice.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use serde_json::Value;

/// The repository root (tests read `tests/golden/` and `weights/` under it, nothing outside).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A JSON file under the repository root.
pub fn read_json(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A model file under `weights/`, which `fetch` (a `just weights` argument) brings.
pub fn weights_file(name: &str, fetch: &str) -> PathBuf {
    let path = repo_root().join("weights").join(name);
    assert!(path.is_file(), "{} is missing: run `just weights {fetch}`", path.display());
    path
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The id of the largest logit (the first of equals).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
