//! What a run shows: live progress bars on a terminal, plain lines otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::kind::Progress;
use crate::live::LiveStep;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub struct Reporter {
    verbosity: Verbosity,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// The steps running and their last progress, for the run's live record.
    running: Mutex<BTreeMap<String, LiveStep>>,
}

impl Reporter {
    /// Live bars only when stderr is a terminal and not quiet.
    pub fn new(verbosity: Verbosity) -> Reporter {
        let live = verbosity != Verbosity::Quiet && std::io::stderr().is_terminal();
        Reporter {
            verbosity,
            multi: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// A line for the user (suppressed by --quiet).
    pub fn line(&self, s: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        self.always(s);
    }

    /// A line shown even with --quiet (errors, the final summary of a failure).
    pub fn always(&self, s: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            // A closed stderr (`demix run 2>&1 | head`) loses the line, not the run.
            None => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr().lock(), "{s}");
            }
        }
    }

    pub fn detail(&self, s: &str) {
        if self.verbosity == Verbosity::Verbose {
            self.always(s);
        }
    }

    /// The steps running now, with their last progress.
    pub fn running(&self) -> BTreeMap<String, LiveStep> {
        self.running.lock().expect("running").clone()
    }

    pub fn start(&self, step: &str) {
        self.running.lock().expect("running").insert(
            step.to_string(),
            LiveStep {
                started: Some(jiff::Timestamp::now()),
                progress: None,
            },
        );
        let Some(m) = &self.multi else { return };
        let bar = m.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed}] {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(step.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .expect("bars")
            .insert(step.to_string(), bar);
    }

    pub fn progress(&self, step: &str, p: &Progress) {
        if let Some(s) = self.running.lock().expect("running").get_mut(step) {
            s.progress = Some(p.clone());
        }
        let bars = self.bars.lock().expect("bars");
        let Some(bar) = bars.get(step) else {
            if let Some(msg) = &p.message {
                self.detail(&format!("  {step}: {msg}"));
            }
            return;
        };
        if let Some(total) = p.total {
            if bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.cyan} {prefix:.bold} [{elapsed}] {bar:20} {human_pos}/{human_len} {wide_msg}",
                    )
                    .expect("valid template"),
                );
            }
            bar.set_position(p.done);
        }
        let mut msg = p.unit.clone();
        if let Some(m) = &p.message {
            if !msg.is_empty() {
                msg.push(' ');
            }
            msg.push_str(m);
        }
        bar.set_message(msg);
    }

    pub fn finish(&self, step: &str) {
        self.running.lock().expect("running").remove(step);
        if let Some(bar) = self.bars.lock().expect("bars").remove(step) {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&bar);
            }
        }
    }
}
