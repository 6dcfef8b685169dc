//! `stellarchat`: the command line over the [`stellarchat`] library.
//!
//! Subcommands: `serve` (the API, [`stellarchat::serve`]), `generate`, `tokenize`, `bench`,
//! `synthetic-gguf` and `export-hf` ([`stellarchat::commands`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stellarchat::{commands, serve};

#[derive(Parser)]
#[command(name = "stellarchat", version = version(), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API over HTTP, SSE and WebSocket.
    Serve(Box<serve::ServeArgs>),
    /// Generate text from a prompt or a chat, streaming it to stdout.
    Generate(commands::generate::GenerateArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Measure an OpenAI-compatible server (ours or another) with concurrent streaming clients.
    Bench(commands::bench::BenchArgs),
    /// Write a small random-weight checkpoint of one model family as a GGUF file.
    SyntheticGguf(commands::synthetic_gguf::SyntheticGgufArgs),
    /// Write a Hugging Face checkpoint directory (safetensors) from a GGUF file.
    ExportHf(commands::export_hf::ExportHfArgs),
}

/// clap wants a `'static` version string; it is built once per process.
fn version() -> &'static str {
    Box::leak(stellarchat::version_with_backends().into_boxed_str())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|runtime| runtime.block_on(serve::main(*args)).map_err(Into::into)),
        Command::Generate(args) => commands::generate::run(args).map_err(Into::into),
        Command::Tokenize(args) => commands::tokenize::run(args).map_err(Into::into),
        Command::Bench(args) => commands::bench::run(args).map_err(Into::into),
        Command::SyntheticGguf(args) => commands::synthetic_gguf::run(args).map_err(Into::into),
        Command::ExportHf(args) => commands::export_hf::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
