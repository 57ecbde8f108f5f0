//! demix-worker: the process that runs the steps that need libtorch (training,
//! evaluation, searches over merged proxies). `demix` starts it with a step's
//! serialized spec; nothing else in demix maps libtorch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "demix-worker",
    version,
    about = "Runs demix steps that need libtorch."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What the engine runs; the same shape as `demix internal`.
    #[command(hide = true)]
    Internal {
        #[command(subcommand)]
        command: Internal,
    },
    /// Print the libtorch version, whether CUDA is usable, the devices and threads.
    Doctor,
}

#[derive(Subcommand)]
enum Internal {
    /// Run one step from a serialized spec.
    ExecStep {
        spec: PathBuf,
        #[arg(long)]
        completion: Option<PathBuf>,
        /// Stop when the process with this pid (the one that started this) is gone.
        #[arg(long, value_name = "PID")]
        die_with_parent: Option<u32>,
    },
    /// Run several specs of a batch folder one after another (a Slurm job).
    ExecBatch { dir: PathBuf, names: Vec<String> },
    /// `demix data check`: read the corpora of a check spec (JSON), print
    /// the report (JSON) on stdout.
    DataCheck { spec: PathBuf },
}

fn main() -> ExitCode {
    // Before anything starts CUDA: a rank of a data-parallel step sees one GPU.
    demix_ml::dist::pin_rank_device();
    let registry = demix_kinds::registry();
    let code = match Cli::parse().command {
        Command::Internal {
            command:
                Internal::ExecStep {
                    spec,
                    completion,
                    die_with_parent,
                },
        } => demix_core::exec::child::exec_step(
            &registry,
            &spec,
            completion.as_deref(),
            die_with_parent,
        ),
        Command::Internal {
            command: Internal::ExecBatch { dir, names },
        } => demix_core::exec::slurm::exec_batch(&registry, &dir, &names),
        Command::Internal {
            command: Internal::DataCheck { spec },
        } => data_check(&spec),
        Command::Doctor => {
            // One line per item, the last one ended too.
            let report = demix_ml::device::doctor().to_string();
            let nl = if report.ends_with('\n') { "" } else { "\n" };
            print!("{report}{nl}");
            0
        }
    };
    // A rank of a data-parallel step ends MPI with the others (or ends them).
    demix_ml::dist::finish(code == 0);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn data_check(spec: &std::path::Path) -> i32 {
    let run = || -> Result<String, String> {
        let text = std::fs::read(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
        let spec: demix_ml::corpus::CheckSpec =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", spec.display()))?;
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let report = demix_ml::corpus::check(&spec, &cancel).map_err(|e| e.to_string())?;
        serde_json::to_string(&report).map_err(|e| e.to_string())
    };
    match run() {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
