//! safeloop-serve: an OpenAI-compatible batched server for the aligned policy.
//!
//! `safeloop-serve [--model PATH] [--host H] [--port N] [--api-key K] [--config FILE] ...`
//! serves HTTP; `safeloop-serve generate ...` runs the engine from the command line.

use safeloop_serve::{config, generate, logs, server};

use clap::{Parser, Subcommand};

/// jemalloc: a long-running server that swaps models under load must hand memory back; with
/// glibc's allocator the resident size ratcheted up by several MiB per swap (scripts/soak.sh).
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed pages go back to the OS within about a second (a background thread purges them), so
/// a drained model version's memory does not linger; `_RJEM_MALLOC_CONF` overrides.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Debug, Parser)]
#[command(
    name = "safeloop-serve",
    version,
    about = "OpenAI-compatible serving of a policy with safety gating (safeloop)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: config::ServeArgs,
    /// Device: cpu, or cuda / cuda:N (needs a build with the `cuda` feature)
    #[arg(long, env = "SAFELOOP_DEVICE", default_value = "cpu")]
    device: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate from the command line with the batched engine.
    Generate(generate::GenerateArgs),
    /// Print trajectory log records as JSON lines.
    Logs(logs::LogsArgs),
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
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Logs(a)) => logs::run(a),
        None => (|| {
            let cfg = config::ServeConfig::resolve(cli.serve)?;
            let dev =
                safeloop_shared::runtime::parse_device(&cli.device).map_err(anyhow::Error::msg)?;
            safeloop_shared::runtime::init_cpu_threads();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(server::serve(cfg, dev))
        })(),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
