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
//!
//! A client that speaks HTTP/2 with prior knowledge (RFC 9113 §3.3) gets no
//! answer at all from hyper's HTTP/1.1 server, only a closed connection.
//! [`Explained`] recognises its preface in the connection's first read and
//! answers in HTTP/2, which that client reads: GOAWAY with
//! `HTTP_1_1_REQUIRED`, saying why.

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
    /// Whether nothing has been read yet: only the first read can be an
    /// HTTP/2 client's preface.
    unread: bool,
}

impl<S> Explained<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
            at_boundary: true,
            unread: true,
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

/// An HTTP/2 client's preface (RFC 9113 §3.4): what hyper closes on without
/// a word (anything else it answers, with a 400 that gets its JSON body).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hadr's answer to an HTTP/2 client: the SETTINGS frame a server's preface
/// must start with (empty: the defaults), then GOAWAY (no stream processed,
/// `HTTP_1_1_REQUIRED`) whose debug data says why (RFC 9113 §3.4, §6.8, §7).
fn http2_refusal() -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    const WHY: &[u8] = b"hadr serves HTTP/1.1 only: send the request over HTTP/1.1";
    // A frame on stream 0, no flags: 24-bit length, type, flags, stream.
    let frame = |kind: u8, payload: &[u8]| {
        let length = u32::try_from(payload.len()).expect("a short payload");
        [&length.to_be_bytes()[1..], &[kind, 0], &[0; 4], payload].concat()
    };
    let last_stream = 0u32.to_be_bytes();
    let goaway = [&last_stream[..], &HTTP_1_1_REQUIRED.to_be_bytes(), WHY].concat();
    [frame(SETTINGS, &[]), frame(GOAWAY, &goaway)].concat()
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Explained<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.unread && buf.filled().len() > before {
            self.unread = false;
            if buf.filled()[before..].starts_with(HTTP2_PREFACE) && self.pending.is_none() {
                // hyper closes the connection without writing: the refusal goes out now (a
                // fresh connection's socket takes it whole), before hyper sees the preface.
                self.pending = Some((http2_refusal(), 0));
                if let Poll::Ready(Err(e)) = self.drive(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        polled
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

    /// An HTTP/2 client's preface, read first, is answered in HTTP/2: the server's SETTINGS,
    /// then GOAWAY with HTTP_1_1_REQUIRED and why; the bytes still reach hyper (which refuses
    /// them). The same line later in a connection is not a preface.
    #[tokio::test]
    async fn an_http2_client_is_told_in_http2_to_use_http1() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut stream = Explained::new(ours);
        theirs.write_all(HTTP2_PREFACE).await.unwrap();
        let mut read = [0; 64];
        let n = stream.read(&mut read).await.unwrap();
        assert_eq!(&read[..n], HTTP2_PREFACE);
        drop(stream);
        let mut answer = Vec::new();
        theirs.read_to_end(&mut answer).await.unwrap();
        // SETTINGS: empty, type 4, stream 0.
        assert_eq!(answer[..9], [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &answer[9..];
        let length = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!((goaway[3], goaway.len()), (7, 9 + length), "{goaway:?}");
        assert_eq!(goaway[13..17], 0xd_u32.to_be_bytes(), "HTTP_1_1_REQUIRED");
        let why = String::from_utf8_lossy(&goaway[17..]);
        assert!(why.contains("HTTP/1.1 only"), "{why}");

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut stream = Explained::new(ours);
        for first in [&b"GET / HTTP/1.1\r\n"[..], HTTP2_PREFACE] {
            theirs.write_all(first).await.unwrap();
            let n = stream.read(&mut read).await.unwrap();
            assert_eq!(&read[..n], first);
        }
        drop(stream);
        let mut answer = Vec::new();
        theirs.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty(), "{answer:?}");
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
