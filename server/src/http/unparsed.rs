//! A JSON body for the answers hyper gives requests it cannot parse.
//!
//! hyper answers a request whose request line or headers it cannot parse by
//! itself: a 400 (431 for headers past its buffer or too many, 414 for a
//! URI too long) with no body, then it closes the connection. It has no hook
//! for that answer, and hadr's rule is that bad input gets a JSON body saying
//! what was wrong. [`Explained`] wraps the connection's stream, recognises
//! hyper's answer among its writes (a 4xx head with `content-length: 0`,
//! which none of hadr's own answers carries: each has a JSON body) and writes
//! the same head with a JSON body instead. Every other write passes through
//! after one comparison of its first bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

/// A stream whose writes of hyper's own 4xx answers gain a JSON body.
pub(crate) struct Explained<S> {
    inner: S,
    /// The answer that replaced hyper's, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// Whether the last write took all it was given. hyper writes its answer only after the
    /// previous one is flushed, so it starts a write; the rest of a body cut by a partial write
    /// is never taken for it, whatever its bytes.
    at_boundary: bool,
}

impl<S> Explained<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
            at_boundary: true,
        }
    }

    /// Notes whether a write of `given` bytes took them all.
    fn wrote(&mut self, polled: Poll<io::Result<usize>>, given: usize) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &polled {
            self.at_boundary = *n == given;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> Explained<S> {
    /// Takes `head` in place of hyper's answer if it is one: hyper is told
    /// all of it was written, and the replacement is written from here on,
    /// as far as the stream takes it now (the rest at the flush).
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.pending.is_some() || !self.at_boundary {
            return None;
        }
        self.pending = Some((explain(head)?, 0));
        Some(match self.drive(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(head.len())),
        })
    }

    /// Writes what is left of the replacement.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            if *written == answer.len() {
                break;
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => *written += n,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Polls `write` once the replacement, if any, is written.
    fn after_drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        ready!(self.drive(cx))?;
        write(Pin::new(&mut self.inner), cx)
    }
}

/// hyper's answer `head` with a JSON body, if it is one: a 4xx head whose
/// headers are only `content-length: 0`, `date` and `connection`.
fn explain(head: &[u8]) -> Option<Vec<u8>> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let status = head
        .strip_prefix(b"HTTP/1.1 4")
        .or(head.strip_prefix(b"HTTP/1.0 4"))?;
    let lines = head
        .strip_suffix(b"\r\n\r\n")?
        .split(|&b| b == b'\n')
        .skip(1);
    let only_hypers = |line: &[u8]| {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        [&b"content-length"[..], b"date", b"connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
    };
    if !lines.into_iter().all(only_hypers) {
        return None;
    }
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    let status = std::str::from_utf8(status.get(..2)?).ok()?;
    let status = StatusCode::from_u16(400 + status.parse::<u16>().ok()?).ok()?;
    let body = refusal(status).to_json();
    let mut answer = Vec::with_capacity(head.len() + body.len() + 48);
    answer.extend_from_slice(&head[..at]);
    answer.extend_from_slice(b"\r\ncontent-type: application/json");
    answer.extend_from_slice(format!("\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    answer.extend_from_slice(&head[at + EMPTY.len()..]);
    answer.extend_from_slice(&body);
    Some(answer)
}

/// What hyper's `status` means: hyper's parse errors (`Server::on_error`).
fn refusal(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request's headers are too large or too many for this server (at most 100 \
             headers and about 400 KiB)",
        ),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request's URI is too long"),
        _ => (
            "malformed_request",
            "the request is not valid HTTP/1.1: its request line or a header could not be parsed",
        ),
    };
    ApiError::new(status, code, message)
}

impl<S: AsyncRead + Unpin> AsyncRead for Explained<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Explained<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(replaced) = self.replace(cx, buf) {
            return replaced;
        }
        let polled = self.after_drive(cx, |inner, cx| inner.poll_write(cx, buf));
        self.wrote(polled, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's answer has no body: a head alone.
        if let [head, rest @ ..] = bufs {
            if rest.iter().all(|b| b.is_empty()) {
                if let Some(replaced) = self.replace(cx, head) {
                    return replaced;
                }
            }
        }
        let polled = self.after_drive(cx, |inner, cx| inner.poll_write_vectored(cx, bufs));
        let given = bufs.iter().map(|b| b.len()).sum();
        self.wrote(polled, given)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.after_drive(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.after_drive(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// hyper 1's answer to a request line it cannot parse, as it writes it.
    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 13:00:00 GMT\r\n\r\n";

    /// What a peer reading everything reads after `writes` went through [`Explained`] (the
    /// stream takes at most 7 bytes a write, so the replacement goes out over many polls).
    async fn through(writes: &[&[u8]]) -> String {
        let (ours, mut theirs) = tokio::io::duplex(7);
        let writes: Vec<Vec<u8>> = writes.iter().map(|w| w.to_vec()).collect();
        let writer = tokio::spawn(async move {
            let mut stream = Explained::new(ours);
            for w in writes {
                stream.write_all(&w).await.unwrap();
            }
            stream.shutdown().await.unwrap();
        });
        let mut text = String::new();
        theirs.read_to_string(&mut text).await.unwrap();
        writer.await.unwrap();
        text
    }

    #[tokio::test]
    async fn hypers_bodiless_refusals_gain_a_json_body() {
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
            ("414 URI Too Long", "uri_too_long"),
        ] {
            let head = String::from_utf8(HYPER_400.to_vec())
                .unwrap()
                .replace("400 Bad Request", status);
            let text = through(&[head.as_bytes()]).await;
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{text}"
            );
            assert!(
                head.contains("\r\ndate: "),
                "the other headers stay: {text}"
            );
            assert!(head.contains("content-type: application/json"), "{text}");
            let length = format!("content-length: {}", body.len());
            assert!(head.contains(&length), "{text}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"], code, "{text}");
            assert!(body["message"].as_str().unwrap().len() > 20, "{text}");
        }
    }

    #[tokio::test]
    async fn every_other_write_passes_through_unchanged() {
        let answer: &[u8] =
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
        let writes: [&[u8]; 5] = [
            answer,
            b"{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // Nothing but a whole head with hyper's headers alone is taken
            // for hyper's answer.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n",
        ];
        assert_eq!(through(&writes).await.as_bytes(), writes.concat());
    }

    /// A body whose end spells hyper's answer, cut there by a partial write, stays a body: only
    /// a write that starts after the last one was taken whole can be hyper's answer.
    #[tokio::test]
    async fn the_rest_of_a_cut_write_is_never_taken_for_hypers_answer() {
        let body = [&b"1234567"[..], HYPER_400].concat();
        // The duplex takes 7 bytes a write: the rest of `body` is written alone, and is exactly
        // hyper's head.
        assert_eq!(through(&[&body]).await.as_bytes(), body);
    }
}
