//! The command-line subcommands besides `serve`: the model without the HTTP server
//! (`generate`, `tokenize`), a load generator for any OpenAI-compatible server (`bench`), the
//! family test checkpoints (`synthetic-gguf`), and Hugging Face checkpoints from GGUF files
//! (`export-hf`).

pub mod bench;
pub mod export_hf;
pub mod generate;
pub mod synthetic_gguf;
pub mod tokenize;

/// The model file `just weights` fetches, relative to the repository root.
pub const DEFAULT_MODEL_PATH: &str = "weights/SmolLM2-135M-Instruct.Q4_1.gguf";
