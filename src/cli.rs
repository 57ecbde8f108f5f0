//! Command-line types. Everything clap knows lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "demix",
    version,
    about = "A content-addressed workflow engine for LLM data-mixture search (DeMix).",
    propagate_version = true
)]
pub struct Cli {
    /// The artifact store [default: ./cache]
    #[arg(long, global = true, env = "DEMIX_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more: fresh steps, waits, progress messages.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the workflow: every step whose inputs or parameters changed.
    Run(RunArgs),
    /// Show each step as fresh, stale or new, and why.
    Status(StatusArgs),
    /// Watch the manifest and inputs; rerun exactly the steps a change makes stale.
    Watch(WatchArgs),
    /// Check a manifest without running anything.
    Check(ManifestArg),
    /// Print the step graph.
    Dag(DagArgs),
    /// Trace a cached artifact back to the data and parameters that made it.
    Lineage(LineageArgs),
    /// Print where the latest report of each `report` step is.
    Report(ReportArgs),
    /// Show the run history.
    Log(LogArgs),
    /// Remove store objects that no kept run references.
    Gc(GcArgs),
    /// Re-hash the store and name corrupt objects.
    Verify(JsonArg),
    /// Print the manifest's JSON Schema.
    Schema,
    /// Print the libtorch version, whether CUDA is usable, the devices and threads.
    Doctor,
    /// Look at the manifest's corpora before training on them.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    #[command(hide = true)]
    Internal {
        #[command(subcommand)]
        command: Internal,
    },
}

#[derive(Subcommand, Debug)]
pub enum Internal {
    /// Run one step from a serialized spec (what executors launch).
    ExecStep {
        spec: PathBuf,
        #[arg(long)]
        completion: Option<PathBuf>,
        /// Stop when the process with this pid (the one that started this) is gone.
        #[arg(long, value_name = "PID")]
        die_with_parent: Option<u32>,
    },
    /// Run several specs of a batch folder one after another (a Slurm job of several steps).
    ExecBatch { dir: PathBuf, names: Vec<String> },
}

#[derive(Args, Debug)]
pub struct ManifestArg {
    /// The workflow manifest [default: demix.yaml, else workflows/demix-tiny.yaml, else workflows/commands.yaml]
    pub manifest: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Run only these steps and what they need (an id, or `id[item]`).
    #[arg(long = "target", short = 't', value_name = "STEP")]
    pub targets: Vec<String>,
    /// Show what would run and why, without running.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Steps run at once [default: the number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// After a failure, finish the steps that do not depend on it.
    #[arg(long, short = 'k')]
    pub keep_going: bool,
    /// Rerun these steps even if they are fresh.
    #[arg(long, value_name = "STEP")]
    pub force: Vec<String>,
    /// GPU device ids steps may use, e.g. `0,1` [default: CUDA_VISIBLE_DEVICES, else all]
    #[arg(long, env = "DEMIX_GPUS", value_name = "IDS", value_parser = gpu_ids)]
    pub gpus: Option<String>,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Act on changes after this many milliseconds of quiet.
    #[arg(long, value_name = "MS", default_value = "200")]
    pub debounce: u64,
    /// Steps run at once [default: the number of CPUs]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// After a failure, finish the steps that do not depend on it.
    #[arg(long, short = 'k')]
    pub keep_going: bool,
    /// GPU device ids steps may use, e.g. `0,1` [default: CUDA_VISIBLE_DEVICES, else all]
    #[arg(long, env = "DEMIX_GPUS", value_name = "IDS", value_parser = gpu_ids)]
    pub gpus: Option<String>,
}

/// `--gpus`: comma-separated device numbers or UUIDs (`GPU-…`, `MIG-…`); empty
/// for none.
fn gpu_ids(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    for id in s.split(',').map(str::trim) {
        let ok = (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            || ((id.starts_with("GPU-") || id.starts_with("MIG-"))
                && id.len() > 4
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/'));
        if !ok {
            return Err(format!(
                "`{id}` is not a GPU id: give device numbers such as `0,1`, or UUIDs such as `GPU-5fd4…`"
            ));
        }
    }
    Ok(s.to_string())
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Documents, bytes, tokens, empty and oversized documents, duplicates and
    /// train/validation overlap of each dataset (exit 1 if a split is empty or
    /// the splits share documents).
    Check(DataCheckArgs),
}

#[derive(Args, Debug)]
pub struct DataCheckArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Check only these datasets (default: all).
    #[arg(long = "dataset", value_name = "NAME")]
    pub datasets: Vec<String>,
    /// Count tokens with this tokenizer: a tokenizer.json, or the id of a
    /// tokenizer step whose result is in the store.
    #[arg(long, value_name = "PATH|STEP")]
    pub tokenizer: Option<String>,
    /// Count documents over this many bytes as oversized.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_document_bytes: u64,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    #[arg(long, value_enum, default_value = "text")]
    pub format: DagFormat,
}

#[derive(Args, Debug)]
pub struct LineageArgs {
    /// A step id, a path in the store (or a file with the same bytes), or a hash prefix.
    pub what: String,
    /// The manifest whose step ids to use [default: as for `run`, if present]
    #[arg(long, short = 'm')]
    pub manifest: Option<PathBuf>,
    /// The whole provenance tree, every result down to the source files,
    /// instead of the summary.
    #[arg(long)]
    pub full: bool,
    /// The tree down to this many levels of producers (implies --full).
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
    /// The full tree and the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Show the last N runs (`-l`, not `-n`: `-n` is a dry run elsewhere).
    #[arg(short = 'l', long, default_value = "20")]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Print what would be removed without removing it.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Keep the results of each workflow's last N runs (besides each step's latest).
    #[arg(long, default_value = "1")]
    pub keep_runs: usize,
    #[arg(long)]
    pub json: bool,
}

/// Where `run` runs steps; see docs/cluster.md.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Run steps here (`local`) or as Slurm jobs (`slurm`) [default: the manifest's `executor.type`, else local]
    #[arg(long, value_enum, value_name = "EXECUTOR")]
    pub executor: Option<Executor>,
    /// Slurm partition for the jobs [default: the manifest's `executor.partition`]
    #[arg(long, value_name = "NAME")]
    pub slurm_partition: Option<String>,
    /// Slurm account for the jobs [default: the manifest's `executor.account`]
    #[arg(long, value_name = "NAME")]
    pub slurm_account: Option<String>,
    /// An extra sbatch argument (repeatable), after the manifest's `executor.flags`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub slurm_flag: Vec<String>,
    /// Steps with equal requests per Slurm job, run one after another [default: `executor.batch`, else 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub slurm_batch: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    Local,
    Slurm,
}
