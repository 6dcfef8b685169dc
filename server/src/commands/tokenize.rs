//! `stellarchat tokenize`: a text's token ids, as llama.cpp's tokenizer gives them.

use clap::Args;
use stellarchat_model::model::ModelLoader;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model file (.gguf), a Hugging Face checkpoint folder, or `synthetic:<preset>`.
    #[arg(long, default_value = super::DEFAULT_MODEL_PATH)]
    model: String,
    /// Parse special tokens such as `<|im_start|>` instead of treating them as text.
    #[arg(long)]
    parse_special: bool,
    /// The text to tokenize.
    text: String,
}

pub fn run(args: TokenizeArgs) -> Result<(), stellarchat_model::ModelError> {
    let loader = ModelLoader::open(&args.model)?;
    let ids = loader.info().tokenizer.encode(&args.text, args.parse_special)?;
    println!("{}", serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()));
    Ok(())
}
