//! `stellarchat`: an OpenAI-compatible LLM inference server in pure Rust.
//!
//! Subcommands: `serve` (the HTTP/SSE/WebSocket API, [`serve`]), `generate` and `tokenize`
//! (the model from the command line, [`commands`]). The model, tokenizer and batching engine
//! live in the `stellarchat-model` crate; this crate holds no tensors.

mod commands;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stellarchat", version = version_with_backends(), about, long_about = None)]
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
}

fn version_with_backends() -> &'static str {
    let backends = stellarchat_model::device::compiled_backends().join(", ");
    Box::leak(format!("{} (backends: {backends})", env!("CARGO_PKG_VERSION")).into_boxed_str())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|runtime| runtime.block_on(serve::run(*args)).map_err(Into::into)),
        Command::Generate(args) => commands::generate::run(args).map_err(Into::into),
        Command::Tokenize(args) => commands::tokenize::run(args).map_err(Into::into),
        Command::Bench(args) => commands::bench::run(args).map_err(Into::into),
        Command::SyntheticGguf(args) => commands::synthetic_gguf::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
