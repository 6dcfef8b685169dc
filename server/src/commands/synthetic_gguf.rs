//! `stellarchat synthetic-gguf`: writes one of the small random-weight family checkpoints
//! (`stellarchat_model::synthetic::cases`) as a GGUF file, with the vocabulary of a real
//! model, so that llama.cpp can run exactly what our family tests run
//! (`scripts/family-references.sh`).

use std::path::PathBuf;

use clap::Args;
use stellarchat_model::ModelError;
use stellarchat_model::gguf::GgufFile;
use stellarchat_model::synthetic::cases::{CASE_SEED, CASES, FamilyCase};

#[derive(Args)]
pub struct SyntheticGgufArgs {
    /// The family case to write (see --list).
    #[arg(long, required_unless_present = "list")]
    case: Option<String>,
    /// Where to write the GGUF file.
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// The GGUF file whose `tokenizer.*` keys give the vocabulary.
    #[arg(long, default_value = super::DEFAULT_MODEL_PATH)]
    vocabulary: PathBuf,
    /// Seed of the weights; the committed llama.cpp references use the default.
    #[arg(long, default_value_t = CASE_SEED)]
    seed: u64,
    /// Print the cases, one a line, and exit.
    #[arg(long)]
    list: bool,
}

pub fn run(args: SyntheticGgufArgs) -> Result<(), ModelError> {
    if args.list {
        for case in CASES {
            println!("{}\t{}", case.name, case.about);
        }
        return Ok(());
    }
    let (Some(name), Some(out)) = (args.case, args.out) else {
        return Err(ModelError::InvalidRequest("--case and --out are required".into()));
    };
    let case = FamilyCase::by_name(&name)?;
    let vocabulary = GgufFile::open(&args.vocabulary)?;
    let bytes = case.gguf(&vocabulary.metadata, args.seed)?;
    std::fs::write(&out, bytes).map_err(|source| ModelError::Io { path: out.clone(), source })?;
    Ok(())
}
