//! What the program prints, read by the thread that supervises it: both pipes and the program's
//! exit are waited on together in one `poll` (`child::poll_readable`), so a trial costs one
//! thread and its end one wake-up, not three threads handing over to each other (on a 2-core
//! machine each extra wake-up of ours landed on the program's core and preempted it).
//!
//! stdout: every line goes to stdout.log; a JSON-object line is a report (`protocol::program::
//! report`), one holding the sweep's metric an evaluation (`Curve`) written to metrics.jsonl and
//! passed to the host; a malformed one is skipped with a warning. stderr: stderr.log (created
//! when the program first writes there) and the last lines, for a failure's message. Both:
//! out-of-memory messages (`protocol::program::oom`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::curve::Curve;
use super::{Host, ProgramTrialError, STDERR_LOG, STDOUT_LOG, TAIL_LINES};
use crate::protocol::program::oom::out_of_memory;
use crate::protocol::program::report::{parse_line_bytes, ProgramLine};
use crate::protocol::trial::{ProgressEvent, METRICS_FILE};

/// What the program's output has told so far.
pub(super) struct Watch {
    pub curve: Curve,
    /// The first out-of-memory message seen.
    pub oom: Option<String>,
    /// The last lines of stderr (and why it could not start, if it could not).
    pub tail: VecDeque<String>,
    /// The host stopped listening (the orchestrator's end of stdout closed).
    pub orchestrator_gone: bool,
    pub started: Instant,
    pub host: Arc<dyn Host>,
}

impl Watch {
    pub fn new(curve: Curve, host: Arc<dyn Host>) -> Self {
        Self {
            curve,
            oom: None,
            tail: VecDeque::new(),
            orchestrator_gone: false,
            started: Instant::now(),
            host,
        }
    }

    fn on_stdout_line(&mut self, line: &[u8], metrics: &mut File) {
        self.note_oom(line);
        match parse_line_bytes(line) {
            ProgramLine::Log => {}
            ProgramLine::Malformed(warning) => {
                self.host
                    .log(&format!("warning: program stdout: {warning}"));
            }
            ProgramLine::Report(report) => {
                let elapsed = self.started.elapsed().as_secs_f64();
                let Some(m) = self.curve.observe(&report, elapsed) else {
                    return;
                };
                let event = ProgressEvent::Epoch(m);
                let Ok(text) = serde_json::to_string(&event) else {
                    return;
                };
                let _ = writeln!(metrics, "{text}");
                if !self.host.report(&event) {
                    self.orchestrator_gone = true;
                }
            }
        }
    }

    fn on_stderr_line(&mut self, line: &[u8]) {
        self.note_oom(line);
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if !text.trim().is_empty() {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(text);
        }
    }

    fn note_oom(&mut self, line: &[u8]) {
        if self.oom.is_some() {
            return;
        }
        let text = String::from_utf8_lossy(line);
        if out_of_memory(&text).is_some() {
            self.oom = Some(text.trim().to_string());
        }
    }
}

/// The longest line kept whole: a longer one is handed on in pieces of this size (a report is
/// a few hundred bytes; this only bounds what a runaway program makes us hold).
const MAX_LINE: usize = 1 << 20;

/// Bytes read so far that do not end a line yet.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds `bytes` and calls `each` on every line they complete (without its `\n`).
    fn push(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            if self.pending.is_empty() {
                each(&rest[..at]);
            } else {
                self.pending.extend_from_slice(&rest[..at]);
                each(&self.pending);
                self.pending.clear();
            }
            rest = &rest[at + 1..];
        }
        self.pending.extend_from_slice(rest);
        // A program that never ends its line cannot make us hold all it writes.
        if self.pending.len() > MAX_LINE {
            each(&self.pending);
            self.pending.clear();
        }
    }

    /// The last line, when the stream ended without a `\n` after it.
    fn finish(&mut self, each: impl FnOnce(&[u8])) {
        if !self.pending.is_empty() {
            each(&self.pending);
            self.pending.clear();
        }
    }
}

/// Which of the program's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stdout,
    Stderr,
}

/// One pipe of the program's, read without blocking.
struct Stream {
    kind: Kind,
    pipe: File,
    lines: LineBuffer,
    /// Its log in the trial folder, which gets the bytes as they come; stderr's is opened when
    /// the program first writes there.
    log: Option<File>,
}

/// Where lines go besides the `Watch`.
struct Sinks {
    metrics: File,
    dir: PathBuf,
}

/// The program's stdout and stderr, and the files they go to.
pub(super) struct Streams {
    open: Vec<Stream>,
    sinks: Sinks,
    /// What one read takes in, allocated once for the trial.
    chunk: Vec<u8>,
}

impl Streams {
    /// Takes the pipes of `program` (made non-blocking) and opens stdout.log and metrics.jsonl.
    pub fn take(
        program: &mut super::child::Program,
        dir: &Path,
    ) -> Result<Self, ProgramTrialError> {
        let mut open = Vec::new();
        for (kind, pipe) in [
            (Kind::Stdout, program.stdout.take()),
            (Kind::Stderr, program.stderr.take()),
        ] {
            let Some(pipe) = pipe else { continue };
            super::child::set_nonblocking(&pipe)
                .map_err(super::io_at("reading the program's output"))?;
            let log = match kind {
                Kind::Stdout => Some(append(&dir.join(STDOUT_LOG))?),
                Kind::Stderr => None,
            };
            open.push(Stream {
                kind,
                pipe,
                lines: LineBuffer::default(),
                log,
            });
        }
        let sinks = Sinks {
            metrics: append(&dir.join(METRICS_FILE))?,
            dir: dir.to_path_buf(),
        };
        Ok(Self {
            open,
            sinks,
            chunk: vec![0; 64 * 1024],
        })
    }

    /// The descriptors of the streams still open, to wait on.
    pub fn fds(&self) -> Vec<RawFd> {
        self.open.iter().map(|s| s.pipe.as_raw_fd()).collect()
    }

    /// Whether both streams reached their end.
    pub fn ended(&self) -> bool {
        self.open.is_empty()
    }

    /// Reads what the streams flagged in `ready` (in the order of [`Self::fds`]) hold, handing
    /// each complete line to `watch`; a stream at its end (or failing) is closed, its last line
    /// handed on even without a `\n`.
    pub fn read_ready(&mut self, ready: &[bool], watch: &mut Watch) {
        let mut index = 0;
        let (sinks, chunk) = (&mut self.sinks, &mut self.chunk);
        self.open.retain_mut(|stream| {
            let is_ready = ready.get(index).copied().unwrap_or(false);
            index += 1;
            !is_ready || stream.read_available(chunk, sinks, watch)
        });
    }
}

impl Stream {
    /// Reads until the pipe is empty (true: still open) or at its end (false).
    fn read_available(&mut self, chunk: &mut [u8], sinks: &mut Sinks, watch: &mut Watch) -> bool {
        loop {
            match self.pipe.read(chunk) {
                Ok(0) => break,
                Ok(n) => self.take_in(&chunk[..n], sinks, watch),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => break,
            }
        }
        let kind = self.kind;
        self.lines.finish(|line| on_line(kind, line, sinks, watch));
        false
    }

    fn take_in(&mut self, bytes: &[u8], sinks: &mut Sinks, watch: &mut Watch) {
        if self.log.is_none() && self.kind == Kind::Stderr {
            self.log = append(&sinks.dir.join(STDERR_LOG)).ok();
        }
        if let Some(log) = &mut self.log {
            let _ = log.write_all(bytes);
        }
        let kind = self.kind;
        self.lines
            .push(bytes, |line| on_line(kind, line, sinks, watch));
    }
}

fn on_line(kind: Kind, line: &[u8], sinks: &mut Sinks, watch: &mut Watch) {
    match kind {
        Kind::Stdout => watch.on_stdout_line(line, &mut sinks.metrics),
        Kind::Stderr => watch.on_stderr_line(line),
    }
}

fn append(path: &Path) -> Result<File, ProgramTrialError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(super::io_at(format!("opening {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            buffer.push(chunk, |l| {
                lines.push(String::from_utf8_lossy(l).to_string())
            });
        }
        buffer.finish(|l| lines.push(String::from_utf8_lossy(l).to_string()));
        lines
    }

    #[test]
    fn lines_are_whole_however_the_pipe_cut_them() {
        assert_eq!(
            lines_of(&[b"{\"a\": 1}\n{\"b\"", b": 2}\n", b"\nlast"]),
            ["{\"a\": 1}", "{\"b\": 2}", "", "last"]
        );
        assert_eq!(lines_of(&[b"one\ntwo\n"]), ["one", "two"]);
        assert!(lines_of(&[b""]).is_empty());
    }

    #[test]
    fn a_line_that_never_ends_is_handed_on_in_bounded_pieces() {
        let big = vec![b'x'; MAX_LINE + 10];
        let mut buffer = LineBuffer::default();
        let mut sizes = Vec::new();
        buffer.push(&big, |l| sizes.push(l.len()));
        buffer.push(b"yy\n", |l| sizes.push(l.len()));
        assert_eq!(sizes, [MAX_LINE + 10, 2]);
    }
}
