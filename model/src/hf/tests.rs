//! Bad-input tests of Hugging Face checkpoints.
