//! Diagnostics for manifests: every error points at a file, line and column.

use std::path::Path;
use std::sync::Arc;

use marked_yaml::{Marker, Span};
use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

/// The text of one manifest file, shared by all diagnostics that point into it.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<String>,
    line_starts: Arc<Vec<usize>>,
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name: path.display().to_string(),
            text: Arc::new(text),
            line_starts: Arc::new(line_starts),
        }
    }

    /// Byte offset of a marker (1-based line, 1-based column in characters).
    pub fn offset(&self, m: &Marker) -> usize {
        let line = m.line().max(1) - 1;
        let Some(&start) = self.line_starts.get(line) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        let col = m.column().max(1) - 1;
        rest.char_indices()
            .nth(col)
            .map(|(i, _)| start + i)
            .unwrap_or(self.text.len())
    }

    /// A source span covering the YAML node that starts at `span`: up to the end of its
    /// scalar token (or the end of the line) so the label underlines the whole value.
    pub fn span(&self, span: &Span) -> SourceSpan {
        let Some(start) = span.start() else {
            return SourceSpan::from((0, 0));
        };
        let a = self.offset(start);
        let b = match span.end() {
            Some(end) => self.offset(end).max(a),
            None => {
                let line_end = self.text[a..].find('\n').map_or(self.text.len(), |i| a + i);
                let token = &self.text[a..line_end];
                // A scalar ends at a flow indicator or a comment.
                let len = token.find([',', ']', '}', '#']).unwrap_or(token.len());
                a + token[..len].trim_end().len()
            }
        };
        SourceSpan::from((a, b.saturating_sub(a)))
    }

    pub fn named(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name.clone(), self.text.clone()).with_language("yaml")
    }

    /// `file:line:col` for a span, for plain-text messages.
    pub fn location(&self, span: &Span) -> String {
        match span.start() {
            Some(m) => format!("{}:{}:{}", self.name, m.line(), m.column()),
            None => self.name.clone(),
        }
    }
}

/// One problem in a manifest, with the node it is about.
#[derive(Debug, Error, Diagnostic)]
#[error("{message}")]
pub struct ManifestDiag {
    pub message: String,
    #[source_code]
    pub src: NamedSource<Arc<String>>,
    #[label("{label}")]
    pub at: SourceSpan,
    pub label: String,
    #[help]
    pub help: Option<String>,
}

/// All problems found in a manifest. One problem renders as itself; several as a
/// summary with each problem related.
#[derive(Debug)]
pub struct ManifestError {
    pub file: String,
    pub problems: Vec<ManifestDiag>,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(f, "invalid manifest {}: {} problems", self.file, many.len()),
        }
    }
}

impl std::error::Error for ManifestError {}

impl ManifestError {
    fn single(&self) -> Option<&ManifestDiag> {
        match self.problems.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

// No `code`: miette prints it as a header line above the message, which
// reads as noise to a person and no program reads it.
impl Diagnostic for ManifestError {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.single().map(|p| &p.src as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.single().and_then(|p| p.labels())
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.single().and_then(|p| p.help())
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.single().is_some() {
            return None;
        }
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// Collects problems while a manifest is checked, so a user sees all of them at once.
pub struct Diags<'a> {
    pub src: &'a SourceFile,
    pub problems: Vec<ManifestDiag>,
}

impl<'a> Diags<'a> {
    pub fn new(src: &'a SourceFile) -> Self {
        Diags {
            src,
            problems: Vec::new(),
        }
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>, label: impl Into<String>) {
        self.push(span, message, label, None);
    }

    pub fn push(
        &mut self,
        span: &Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        self.problems.push(ManifestDiag {
            message: format!("{}: {}", self.src.location(span), message.into()),
            src: self.src.named(),
            at: self.src.span(span),
            label: label.into(),
            help,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn finish(mut self) -> Result<(), ManifestError> {
        self.problems.sort_by_key(|p| p.at.offset());
        // A fan-out step repeats its problems once per item: show each once.
        self.problems.dedup_by(|a, b| a.message == b.message);
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ManifestError {
                file: self.src.name.clone(),
                problems: self.problems,
            })
        }
    }
}

/// "did you mean `x`?" for a misspelt name.
pub fn did_you_mean<'n>(
    name: &str,
    candidates: impl IntoIterator<Item = &'n str>,
) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(format!("did you mean `{}`?", best.1))
}
