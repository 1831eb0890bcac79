//! The `credence` binary: parse, then hand over to `cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = credence::cli::Cli::parse();
    credence::cli::main(cli)
}
