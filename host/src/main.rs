//! The `fapi-host` binary: parses the command line and hands it to the library.
use clap::Parser as _;

/// mimalloc, not glibc's malloc: the batch allocates response bodies on the client's thread and
/// frees them on its writer thread, and glibc's arena locks made that cross-thread traffic the
/// batch's largest single cost (README, "Batch: throughput").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fapi_host::cli::run(fapi_host::cli::Cli::parse())
}
