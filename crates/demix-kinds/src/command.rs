//! `kind: command`: runs a program with declared inputs and outputs, like a DVC stage.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use demix_core::kind::{Kind, Plan, RunCtx, StepError};
use demix_core::manifest::template::{self, Piece, Ref};
use demix_core::manifest::{Diags, did_you_mean};

pub struct Command;

/// The program to run: an argv list, or a shell string with `shell: true`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Run {
    Argv(Vec<String>),
    Shell(String),
}

/// Fields of a `command` step.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct CommandFields {
    /// argv list (`[python3, script.py, "${inputs.data}"]`), or a string run by
    /// `sh -c` when `shell: true`. `${inputs.NAME}`, `${outputs.NAME}` and `${out}`
    /// become paths.
    pub run: Run,
    /// Run `run` through `sh -c` (required for a string `run`).
    #[serde(default)]
    pub shell: bool,
    /// Named inputs: `${datasets.NAME}`, `${steps.ID.OUTPUT}`, `${steps.ID[*].OUTPUT}`,
    /// or a file or folder path relative to the manifest.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub inputs: BTreeMap<String, Spanned<String>>,
    /// Named outputs: paths inside the step's own output directory (`/` ends a folder).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub outputs: BTreeMap<String, Spanned<String>>,
    /// Environment variables for the program (part of the cache key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the manifest (default: the manifest's folder).
    #[serde(default)]
    pub workdir: Option<String>,
}

/// The resolved fields as the key hashes them and the step runs them.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CommandSpec {
    pub run: Run,
    pub shell: bool,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// Why an output path is not a path inside the step's output directory; each
/// variant but `Empty` holds the path as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputPathError {
    #[error("output path is empty")]
    Empty,
    #[error("output path `{0}` is absolute; outputs are paths inside the step's output directory")]
    Absolute(String),
    #[error("output path `{0}` escapes the step's output directory")]
    Escapes(String),
    #[error("output path `{0}` is not a relative path")]
    NotRelative(String),
    #[error("output path `{0}` names the output directory itself")]
    OutputDir(String),
}

/// Checks that an output path stays inside the output directory.
pub fn check_output_path(p: &str) -> Result<String, OutputPathError> {
    if p.is_empty() {
        return Err(OutputPathError::Empty);
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return Err(OutputPathError::Absolute(p.to_string()));
    }
    let mut depth = 0i32;
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => {
                depth += 1;
                parts.push(s.to_string_lossy().into_owned());
            }
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                parts.pop();
                if depth < 0 {
                    return Err(OutputPathError::Escapes(p.to_string()));
                }
            }
            _ => return Err(OutputPathError::NotRelative(p.to_string())),
        }
    }
    if parts.is_empty() {
        return Err(OutputPathError::OutputDir(p.to_string()));
    }
    let mut s = parts.join("/");
    if p.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

fn runtime_refs(s: &str) -> Vec<Ref> {
    template::parse(s)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Lit(_) => None,
        })
        .collect()
}

impl Kind for Command {
    const NAME: &'static str = "command";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "runs a program with declared inputs and outputs";
    type Fields = CommandFields;
    type Params = CommandSpec;

    fn plan(&self, f: CommandFields, body: &Node, d: &mut Diags) -> Option<Plan> {
        let map = body.as_mapping()?;
        check_run(&f, map, body, d);
        check_names(&f, map, body, d);
        let mut paths = Vec::new();
        for (name, v) in &f.inputs {
            check_input(name, v, d, &mut paths);
        }
        let mut outputs = BTreeMap::new();
        for (name, v) in &f.outputs {
            match check_output_path(v.as_str()) {
                Ok(p) => {
                    outputs.insert(name.clone(), p);
                }
                Err(e) => d.error(v.span(), e.to_string(), "output path"),
            }
        }
        check_runtime_refs(&f, map, body, d);
        let spec = CommandSpec {
            run: f.run,
            shell: f.shell,
            inputs: f
                .inputs
                .into_iter()
                .map(|(k, v)| (k, v.as_str().to_string()))
                .collect(),
            outputs: outputs.clone(),
            env: f.env,
            workdir: f.workdir,
        };
        Some(Plan {
            paths,
            outputs,
            runtime_refs: true,
            ..Plan::new(&spec)
        })
    }

    fn run(&self, f: CommandSpec, ctx: &RunCtx) -> Result<(), StepError> {
        let out = ctx.out_dir;
        create_output_dirs(ctx)?;
        let argv: Vec<String> = match &f.run {
            Run::Argv(v) => {
                let mut a = Vec::new();
                for x in v {
                    a.extend(expand(&f, ctx, x)?);
                }
                a
            }
            Run::Shell(s) => vec!["sh".into(), "-c".into(), expand(&f, ctx, s)?.join(" ")],
        };
        let workdir: PathBuf = match &f.workdir {
            Some(w) => {
                let w = expand(&f, ctx, w)?.join(" ");
                ctx.spec.workdir.join(w)
            }
            None => ctx.spec.workdir.clone(),
        };
        if !workdir.is_dir() {
            return Err(StepError::Failed(format!(
                "workdir {} is not a folder that exists",
                workdir.display()
            )));
        }
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&workdir)
            .env("DEMIX_OUT", out)
            .env("DEMIX_STEP", &ctx.spec.step);
        for (name, rel) in &ctx.spec.outputs {
            cmd.env(
                format!("DEMIX_OUTPUT_{}", env_name(name)),
                out.join(rel.trim_end_matches('/')),
            );
        }
        for name in f.inputs.keys() {
            cmd.env(
                format!("DEMIX_INPUT_{}", env_name(name)),
                input_paths(&f, ctx, name)?.join(":"),
            );
        }
        for (k, v) in &f.env {
            cmd.env(k, expand(&f, ctx, v)?.join(" "));
        }
        run_logged(cmd, &format!("`{}`", argv[0]), ctx)
    }
}

/// Runs `cmd` (`what`, for a failure to start it) to its end with its output
/// appended to the step's log, in a process group of its own so that a
/// cancel reaches everything it started.
pub(crate) fn run_logged(
    mut cmd: std::process::Command,
    what: &str,
    ctx: &RunCtx,
) -> Result<(), StepError> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(ctx.log)
        .map_err(StepError::io(format!("opening log {}", ctx.log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(StepError::io("log"))?)
        .stderr(log)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| StepError::Failed(format!("cannot start {what}: {e}")))?;
    wait_or_cancel(child, ctx)
}

/// Each output's folder (or its parent, for a file), so the command can write there.
fn create_output_dirs(ctx: &RunCtx) -> Result<(), StepError> {
    let out = ctx.out_dir;
    for rel in ctx.spec.outputs.values() {
        let p = out.join(rel.trim_end_matches('/'));
        let dir = if rel.ends_with('/') {
            p.as_path()
        } else {
            p.parent().unwrap_or(out)
        };
        std::fs::create_dir_all(dir)
            .map_err(StepError::io(format!("creating {}", dir.display())))?;
    }
    Ok(())
}

/// The paths of the input the step declared as `name`.
fn input_paths(f: &CommandSpec, ctx: &RunCtx, name: &str) -> Result<Vec<String>, StepError> {
    let key = f
        .inputs
        .get(name)
        .ok_or_else(|| StepError::Failed(format!("unknown input `{name}`")))?;
    Ok(ctx
        .input(key)?
        .iter()
        .map(|p| p.display().to_string())
        .collect())
}

/// Expands one template; a lone multi-path reference yields several argv words.
fn expand(f: &CommandSpec, ctx: &RunCtx, s: &str) -> Result<Vec<String>, StepError> {
    let out = ctx.out_dir;
    let pieces = template::parse(s).map_err(StepError::library)?;
    let value = |r: &Ref| -> Result<Vec<String>, StepError> {
        Ok(match r {
            Ref::Input(n) => input_paths(f, ctx, n)?,
            Ref::Output(n) => {
                let rel = ctx
                    .spec
                    .outputs
                    .get(n)
                    .ok_or_else(|| StepError::Failed(format!("unknown output `{n}`")))?;
                vec![out.join(rel.trim_end_matches('/')).display().to_string()]
            }
            Ref::OutDir => vec![out.display().to_string()],
            other => {
                return Err(StepError::Failed(format!("unresolved reference `{other}`")));
            }
        })
    };
    if let [Piece::Ref(r)] = pieces.as_slice() {
        return value(r);
    }
    let mut s = String::new();
    for p in &pieces {
        match p {
            Piece::Lit(l) => s.push_str(l),
            Piece::Ref(r) => s.push_str(&value(r)?.join(" ")),
        }
    }
    Ok(vec![s])
}

/// Polls the command until it exits; a cancel kills its whole process group.
pub(crate) fn wait_or_cancel(
    mut child: std::process::Child,
    ctx: &RunCtx,
) -> Result<(), StepError> {
    let pgid = child.id() as i32;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(StepError::io("waiting for the command"))?
        {
            if status.success() {
                return Ok(());
            }
            return Err(StepError::Failed(match status.code() {
                Some(c) => format!("command exited with status {c}"),
                None => format!("command was killed ({status})"),
            }));
        }
        if ctx.cancel.load(Ordering::Relaxed) {
            kill_group(pgid, &mut child);
            return Err(StepError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// SIGTERM to the group, then SIGKILL after a grace period.
pub fn kill_group(pgid: i32, child: &mut std::process::Child) {
    // SAFETY: kill(2) with a negative pid signals the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

type Map = marked_yaml::types::MarkedMappingNode;

/// `run` and `shell` agree.
fn check_run(f: &CommandFields, map: &Map, body: &Node, d: &mut Diags) {
    let run_span = map.get_node("run").map_or(*body.span(), |n| *n.span());
    match &f.run {
        Run::Shell(_) if !f.shell => d.push(
            &run_span,
            "`run` is a string but `shell: true` is not set",
            "shell string",
            Some("write `run` as an argv list, or add `shell: true` to run it with sh -c".into()),
        ),
        Run::Argv(v) if v.is_empty() => d.error(&run_span, "`run` is an empty list", "run"),
        Run::Argv(_) if f.shell => d.error(
            &run_span,
            "`shell: true` needs `run` to be one string",
            "run",
        ),
        _ => {}
    }
}

/// Input and output names become environment variables: plain names, no two
/// alike there; `env` keys are variable names.
fn check_names(f: &CommandFields, map: &Map, body: &Node, d: &mut Diags) {
    let mut env_names: BTreeMap<String, String> = BTreeMap::new();
    for (what, names) in [("input", f.inputs.keys()), ("output", f.outputs.keys())] {
        let section = if what == "input" { "inputs" } else { "outputs" };
        for name in names {
            let at = map
                .get_mapping(section)
                .and_then(|m| m.keys().find(|k| k.as_str() == name).map(|k| *k.span()))
                .unwrap_or(*body.span());
            if !is_plain_name(name) {
                d.error(
                    &at,
                    format!("{what} name `{name}` is not a plain name (letters, digits, `_`, `-`)"),
                    section,
                );
                continue;
            }
            let var = format!("DEMIX_{}_{}", what.to_uppercase(), env_name(name));
            if let Some(other) = env_names.insert(var.clone(), name.clone()) {
                d.error(
                    &at,
                    format!("{what}s `{other}` and `{name}` would both be ${var}"),
                    section,
                );
            }
        }
    }
    for k in f.env.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            let at = map
                .get_mapping("env")
                .and_then(|m| m.keys().find(|x| x.as_str() == k).map(|x| *x.span()))
                .unwrap_or(*body.span());
            d.error(
                &at,
                format!("`{k}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"),
                "env",
            );
        }
    }
}

/// An input is one reference or a path (added to `paths`).
fn check_input(name: &str, v: &Spanned<String>, d: &mut Diags, paths: &mut Vec<Spanned<String>>) {
    let pieces = match template::parse(v.as_str()) {
        Ok(p) => p,
        Err(e) => return d.error(v.span(), e.to_string(), "input"),
    };
    match pieces.as_slice() {
        [Piece::Ref(Ref::Step { .. } | Ref::Dataset { .. })] => {}
        [Piece::Lit(_)] => paths.push(v.clone()),
        _ => d.error(
            v.span(),
            format!("input `{name}` must be one reference (`${{steps.ID.OUTPUT}}`, `${{datasets.NAME}}`) or a path"),
            "input",
        ),
    }
}

/// Runtime references in `run`, `env` and `workdir` name declared inputs and outputs.
fn check_runtime_refs(f: &CommandFields, map: &Map, body: &Node, d: &mut Diags) {
    let run_span = map.get_node("run").map_or(*body.span(), |n| *n.span());
    let field_span = |k: &str| map.get_node(k).map_or(*body.span(), |n| *n.span());
    let mut texts: Vec<(String, marked_yaml::Span)> = Vec::new();
    match &f.run {
        Run::Argv(v) => {
            let spans: Vec<marked_yaml::Span> = map
                .get_sequence("run")
                .map(|s| s.iter().map(|n| *n.span()).collect())
                .unwrap_or_default();
            for (i, a) in v.iter().enumerate() {
                texts.push((a.clone(), spans.get(i).copied().unwrap_or(run_span)));
            }
        }
        Run::Shell(s) => texts.push((s.clone(), run_span)),
    }
    for (k, v) in &f.env {
        let span = map
            .get_mapping("env")
            .and_then(|m| m.get_node(k))
            .map_or_else(|| field_span("env"), |n| *n.span());
        texts.push((v.clone(), span));
    }
    if let Some(w) = &f.workdir {
        texts.push((w.clone(), field_span("workdir")));
    }
    for (t, span) in &texts {
        if let Err(e) = template::parse(t) {
            d.error(span, e.to_string(), "template");
            continue;
        }
        for r in runtime_refs(t) {
            match &r {
                Ref::Input(n) if !f.inputs.contains_key(n) => d.push(
                    span,
                    format!("`{r}` names no declared input"),
                    "unknown input",
                    did_you_mean(n, f.inputs.keys().map(String::as_str))
                        .or_else(|| Some("declare it under `inputs:`".into())),
                ),
                Ref::Output(n) if !f.outputs.contains_key(n) => d.push(
                    span,
                    format!("`{r}` names no declared output"),
                    "unknown output",
                    did_you_mean(n, f.outputs.keys().map(String::as_str))
                        .or_else(|| Some("declare it under `outputs:`".into())),
                ),
                Ref::Step { .. } | Ref::Dataset { .. } => d.push(
                    span,
                    format!("`{r}` cannot be used here directly"),
                    "reference",
                    Some("declare it under `inputs:` and use `${inputs.NAME}`".into()),
                ),
                _ => {}
            }
        }
    }
}
