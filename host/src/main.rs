//! The `fapi-host` binary: parses the command line and hands it to the library.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    fapi_host::cli::run(fapi_host::cli::Cli::parse())
}
