//! The `strand` binary: `strand broker` runs a broker; `strand bench` measures one.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = strand::cli::Cli::parse();
    strand::cli::run(cli)
}
