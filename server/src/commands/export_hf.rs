//! `stellarchat export-hf`: writes a Hugging Face checkpoint (`config.json`, safetensors,
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) from a GGUF file
//! ([`stellarchat_model::hf::write_checkpoint`]), which `--model DIR` then serves and
//! `transformers` loads.

use std::path::PathBuf;

use clap::Args;
use stellarchat_model::ModelError;
use stellarchat_model::hf::{HfDtype, HfExport, write_checkpoint};

#[derive(Args)]
pub struct ExportHfArgs {
    /// The GGUF file to export.
    #[arg(long, default_value = super::DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// The checkpoint directory to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Float type of the weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: HfDtype,
    /// Number of `.safetensors` files (more than one adds `model.safetensors.index.json`).
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

pub fn run(args: ExportHfArgs) -> Result<(), ModelError> {
    write_checkpoint(&args.model, &args.out, HfExport { dtype: args.dtype, shards: args.shards })?;
    println!("wrote {}", args.out.display());
    Ok(())
}
