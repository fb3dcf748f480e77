//! Logs for people and for log collectors: colour only on a terminal, JSON
//! on request, and a line that repeats (a peer down makes openraft report
//! every heartbeat, dozens of lines a second) written once per window and
//! then summarised as "repeated N times in 10 s".
//!
//! Repetition is judged on the formatted line with its timestamp and every
//! digit left out, so lines that differ only by a counter, a duration or a
//! node id count as one.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the repeats of a line are counted before they are summarised.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct lines remembered at once; the oldest are forgotten past it.
const LINES_REMEMBERED_MAX: usize = 1024;
/// The most of a repeated line its summary quotes.
const QUOTED_BYTES_MAX: usize = 240;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people (colour only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The filter of log lines when `RUST_LOG` sets none: info, openraft's
/// own lines from warn, and no trace spans in the lines' context.
const DEFAULT_FILTER: &str = "info,openraft=warn,wasmraft::trace=off";

/// The process's logger on stderr: `RUST_LOG` filters it (default
/// [`DEFAULT_FILTER`]).
pub(crate) fn layer<S>(format: LogFormat) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let writer = Deduplicating::new(io::stderr, REPEAT_WINDOW);
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => lines
            .with_ansi(io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => lines.json().with_filter(filter).boxed(),
    }
}

/// A writer that passes each line through once per [`REPEAT_WINDOW`] and
/// counts the repeats, writing a summary when the line comes back after
/// the window (or when any line is written after it).
#[derive(Clone, Debug)]
pub struct Deduplicating<M> {
    inner: M,
    state: Arc<Mutex<Seen>>,
}

#[derive(Debug)]
struct Seen {
    window: Duration,
    lines: HashMap<String, Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// The line as first written in this window, without its timestamp.
    first: String,
    repeats: u64,
}

impl<M> Deduplicating<M> {
    pub fn new(inner: M, window: Duration) -> Self {
        Deduplicating {
            inner,
            state: Arc::new(Mutex::new(Seen {
                window,
                lines: HashMap::new(),
            })),
        }
    }
}

/// The line without its leading timestamp (the first word, when it looks
/// like one), and the key repetition is judged on: that, without digits.
fn key_of(line: &str) -> (&str, String) {
    let body = match line.split_once(' ') {
        Some((first, rest)) if first.bytes().filter(u8::is_ascii_digit).count() >= 8 => rest,
        _ => line,
    };
    let key = body.chars().filter(|c| !c.is_ascii_digit()).collect();
    (body, key)
}

fn summary(window: &Window, now: Instant) -> String {
    let quoted: String = window
        .first
        .trim_end()
        .chars()
        .take(QUOTED_BYTES_MAX)
        .collect();
    format!(
        "(repeated {} times in {} s) {quoted}\n",
        window.repeats,
        now.duration_since(window.started).as_secs().max(1)
    )
}

impl Seen {
    /// What to write for `line` at `now`: the summaries of windows that
    /// ended, then the line itself unless it repeats within its window.
    fn admit(&mut self, line: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let window = self.window;
        // Windows that ended: summarise those with repeats, forget them all.
        let mut ended: Vec<String> = self
            .lines
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.started) >= window)
            .map(|(key, _)| key.clone())
            .collect();
        ended.sort();
        for key in ended {
            if let Some(seen) = self.lines.remove(&key)
                && seen.repeats > 0
            {
                out.push(summary(&seen, now));
            }
        }
        let (body, key) = key_of(line);
        if let Some(seen) = self.lines.get_mut(&key) {
            seen.repeats += 1;
            return out;
        }
        if self.lines.len() >= LINES_REMEMBERED_MAX
            && let Some(oldest) = self
                .lines
                .iter()
                .min_by_key(|(_, seen)| seen.started)
                .map(|(key, _)| key.clone())
        {
            self.lines.remove(&oldest);
        }
        self.lines.insert(
            key,
            Window {
                started: now,
                first: body.to_owned(),
                repeats: 0,
            },
        );
        out.push(line.to_owned());
        out
    }
}

/// Collects one event's bytes; decides and writes when dropped.
#[derive(Debug)]
pub struct LineWriter<W: Write> {
    inner: W,
    state: Arc<Mutex<Seen>>,
    buffer: Vec<u8>,
}

impl<W: Write> Write for LineWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for LineWriter<W> {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.buffer).into_owned();
        // Logging has no one to report its own failures to.
        let lines = match self.state.lock() {
            Ok(mut seen) => seen.admit(&line, Instant::now()),
            Err(_) => vec![line],
        };
        for line in lines {
            let _ = self.inner.write_all(line.as_bytes());
        }
        let _ = self.inner.flush();
    }
}

impl<'a, M> MakeWriter<'a> for Deduplicating<M>
where
    M: MakeWriter<'a>,
{
    type Writer = LineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            inner: self.inner.make_writer(),
            state: Arc::clone(&self.state),
            buffer: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen {
            window: Duration::from_secs(10),
            lines: HashMap::new(),
        }
    }

    #[test]
    fn a_repeated_line_is_written_once_per_window_then_summarised() {
        let mut seen = seen();
        let start = Instant::now();
        let line = |n: u32| {
            format!(
                "2026-12-02T01:34:28.{n:06}Z  WARN openraft::replication: error to target=3 after {n} ms\n"
            )
        };
        let mut written = Vec::new();
        for n in 0..500u32 {
            let at = start + Duration::from_millis(u64::from(n) * 40);
            written.extend(seen.admit(&line(n), at));
        }
        // 20 s of a line every 40 ms: the line at 0 s and at 10 s, and one
        // summary of the first window's repeats.
        assert_eq!(written.len(), 3, "{written:#?}");
        assert_eq!(written[0], line(0));
        assert!(
            written[1].starts_with("(repeated 249 times in 10 s)  WARN openraft::replication"),
            "{}",
            written[1]
        );
        assert_eq!(written[2], line(250));
    }

    #[test]
    fn different_lines_pass_and_a_quiet_window_is_summarised_by_the_next_line() {
        let mut seen = seen();
        let start = Instant::now();
        let a = "2026-12-02T01:00:00.000001Z ERROR node: disk full\n";
        let b = "2026-12-02T01:00:00.000002Z  INFO node: serving\n";
        assert_eq!(seen.admit(a, start), vec![a.to_owned()]);
        assert!(seen.admit(a, start + Duration::from_secs(1)).is_empty());
        assert_eq!(
            seen.admit(b, start + Duration::from_secs(2)),
            vec![b.to_owned()]
        );
        let later = seen.admit(b, start + Duration::from_secs(30));
        assert_eq!(
            later,
            vec![
                "(repeated 1 times in 30 s) ERROR node: disk full\n".to_owned(),
                b.to_owned()
            ]
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut seen = seen();
        let start = Instant::now();
        for n in 0..(LINES_REMEMBERED_MAX * 2) {
            // Letters, not digits, so that every line is distinct.
            let word: String = format!("{n:x}")
                .chars()
                .map(|c| (b'g' + c.to_digit(16).unwrap() as u8) as char)
                .collect();
            seen.admit(&format!("{word}\n"), start);
        }
        assert!(seen.lines.len() <= LINES_REMEMBERED_MAX);
    }
}
