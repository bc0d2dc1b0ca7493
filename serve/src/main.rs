//! safeloop-serve: serves the aligned policy. For now: `generate`, the batched engine on the
//! command line; the OpenAI-compatible HTTP server is the next stage.

mod generate;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "safeloop-serve",
    version,
    about = "Serve a policy with safety gating (safeloop)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate from the command line with the batched engine.
    Generate(generate::GenerateArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
