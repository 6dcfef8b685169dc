//! TEMPORARY: builds the `serve` module alone (see server/Cargo.toml); delete with the
//! `serve-check` bin target once main.rs declares `mod serve;`.
#[path = "mod.rs"]
mod serve;

fn main() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: serve::ServeArgs,
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = runtime.block_on(serve::run(cli.serve)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
