//! The `strand` binary: `strand broker` runs a broker; `strand bench` measures one;
//! `strand groups` shows its consumer groups.

use clap::Parser;

/// Large allocations are lazily committed mappings: see `strand::large_alloc`.
#[global_allocator]
static ALLOCATOR: strand::large_alloc::LazyLargeAllocator = strand::large_alloc::LazyLargeAllocator;

fn main() -> std::process::ExitCode {
    let cli = strand::cli::Cli::parse();
    strand::cli::run(cli)
}
