//! What a run shows: live progress bars on a terminal, plain lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::kind::Progress;

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
}

impl Reporter {
    /// Live bars only when stderr is a terminal and not quiet.
    pub fn new(verbosity: Verbosity) -> Reporter {
        let live = verbosity != Verbosity::Quiet && std::io::stderr().is_terminal();
        Reporter {
            verbosity,
            multi: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
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
            None => eprintln!("{s}"),
        }
    }

    pub fn detail(&self, s: &str) {
        if self.verbosity == Verbosity::Verbose {
            self.always(s);
        }
    }

    pub fn start(&self, step: &str) {
        let Some(m) = &self.multi else { return };
        let bar = m.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed}] {msg}")
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
                        "{spinner:.cyan} {prefix:.bold} [{elapsed}] {bar:30} {human_pos}/{human_len} {msg}",
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
        if let Some(bar) = self.bars.lock().expect("bars").remove(step) {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&bar);
            }
        }
    }
}
