//! A guest's stdout and stderr, routed into the host's log.
//!
//! A panicking guest prints its message to stderr just before it traps; that
//! line is the best clue an operator gets, so it is logged under the
//! instance's name instead of being dropped or interleaved raw with the
//! host's own output. Output is split into lines, each line is capped, and
//! each stream stops logging after 64 KiB per instance so a
//! chatty guest cannot flood the host's log.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged as one record.
const MAX_LINE: usize = 4096;
/// Bytes one stream of one instance may log in its lifetime.
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
}

impl GuestLog {
    /// A log sink for the sandbox named by `instance`, stream `"stdout"` or `"stderr"`.
    pub fn new(instance: LogName, stream: &'static str) -> Self {
        Self { instance, stream }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            log: self.clone(),
            line: Vec::new(),
            logged: 0,
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
    logged: usize,
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
        if self.logged < MAX_LOGGED {
            self.logged += self.line.len();
            let text = String::from_utf8_lossy(&self.line);
            let instance = self.log.instance.get();
            tracing::warn!(instance = %instance, stream = self.log.stream, "guest: {text}");
            if self.logged >= MAX_LOGGED {
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
