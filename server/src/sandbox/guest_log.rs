//! A guest's stdout and stderr, routed into the host's log.
//!
//! A panicking guest prints its message to stderr just before it traps; that
//! line is the best clue an operator gets, so it is logged under the
//! instance's name instead of being dropped or interleaved raw with the
//! host's own output. Output is split into lines, each line is capped, and
//! each stream stops logging after 64 KiB per sandbox, counted over every
//! handle the guest opens on it, so a chatty guest cannot flood the host's
//! log.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged as one record.
const MAX_LINE: usize = 4096;
/// Bytes one stream of one sandbox may log in its lifetime.
const MAX_LOGGED: usize = 64 * 1024;

/// The instance name a sandbox logs under; a warm spare gets its name when
/// it takes an instance's place.
#[derive(Clone, Default)]
pub struct LogName(Arc<Mutex<Arc<str>>>);

impl LogName {
    /// A name to log under.
    pub fn new(name: &str) -> Self {
        Self(Arc::new(Mutex::new(name.into())))
    }

    /// Renames the sandbox in the log from now on.
    pub fn set(&self, name: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = name.into();
    }

    fn get(&self) -> Arc<str> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where a guest stream goes: the host log, tagged with the instance.
#[derive(Clone)]
pub struct GuestLog {
    instance: LogName,
    stream: &'static str,
    /// Bytes logged from this stream so far, shared by all its handles: a
    /// guest reopening stdout does not get a fresh allowance.
    logged: Arc<AtomicUsize>,
}

impl GuestLog {
    /// A log sink for the sandbox named by `instance`, stream `"stdout"` or `"stderr"`.
    pub fn new(instance: LogName, stream: &'static str) -> Self {
        Self {
            instance,
            stream,
            logged: Arc::default(),
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            log: self.clone(),
            line: Vec::new(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n') {
            self.append(&bytes[..pos]);
            self.emit();
            bytes = &bytes[pos + 1..];
        }
        self.append(bytes);
        if self.line.len() >= MAX_LINE {
            self.emit();
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let before = self
            .log
            .logged
            .fetch_add(self.line.len(), Ordering::Relaxed);
        if before < MAX_LOGGED {
            let text = String::from_utf8_lossy(&self.line);
            let instance = self.log.instance.get();
            tracing::warn!(instance = %instance, stream = self.log.stream, "guest: {text}");
            if before + self.line.len() >= MAX_LOGGED {
                tracing::warn!(instance = %instance, stream = self.log.stream,
                    "guest wrote more than {MAX_LOGGED} bytes; the rest of this stream is dropped");
            }
        }
        self.line.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log records written while `f` runs, one per line.
    fn logged_lines(f: impl FnOnce()) -> usize {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().filter(|l| l.contains("guest: ")).count()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reopening_a_stream_does_not_renew_its_allowance() {
        let log = GuestLog::new(LogName::new("p1"), "stderr");
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        let lines = logged_lines(|| {
            // Each handle writes the whole allowance twice over.
            for _ in 0..4 {
                let mut handle = log.writer();
                for _ in 0..(2 * MAX_LOGGED / line.len()) {
                    handle.push(&line);
                }
            }
        });
        // The allowance holds 64 lines of 1 KiB, over all four handles.
        assert_eq!(lines, MAX_LOGGED / 1023 + 1, "{lines} lines logged");
    }
}
