//! The `corecast` binary: parses the command line ([`cli`]) and hands over to the server
//! library, the load generator (`corecast-bench`) or the client (`corecast-client`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
