//! The `demix` binary: parse the command line, run the command, map errors to exit codes.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Wrapped diagnostics help a terminal; in logs and pipes one line per message is better.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(tty).build())
    }));
    let cli = cli::Cli::parse();
    commands::init_tracing(&cli);
    match commands::dispatch(cli) {
        Ok(code) => code,
        // Like cargo and ripgrep: when stdout's reader leaves (`demix log | head`),
        // stop writing and exit 0 without a word.
        Err(report)
            if report
                .downcast_ref::<commands::CliError>()
                .is_some_and(commands::CliError::is_broken_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(report) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr().lock(), "{report:?}");
            ExitCode::from(commands::exit_code(&report))
        }
    }
}
