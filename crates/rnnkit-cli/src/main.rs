//! `rnnkit`: recurrent networks on the CPU from the command line.

fn main() -> std::process::ExitCode {
    rnnkit_cli::main()
}
