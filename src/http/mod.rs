//! The sync worker's HTTP/1.1: reading one request head from a
//! connection, deciding whether it is answerable, and laying out the bytes
//! of the one response that goes back before the connection is closed.
//!
//! This module owns the wire format only: head and body limits, the
//! mapping of bad input to 400/405/408/413/431/501, the JSON body of the
//! 200 answer, and response framing (`Connection: close` every time).
//!
//! It does not own sockets, timeouts or counters: the worker sets the
//! per-connection read/write timeout on the socket (a timed-out read shows
//! up here as `WouldBlock` or `TimedOut`), gathers the numbers in [`Info`]
//! and closes the connection after the response. Nothing here allocates
//! for the head beyond the request target it hands back, and nothing here
//! panics on any byte sequence a peer can send.

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};

/// Request line plus headers, in bytes, including the blank line.
pub const MAX_HEAD: usize = 8192;
/// A `Content-Length` body up to this many bytes is read and discarded.
pub const MAX_BODY: u64 = 64 * 1024;

/// httparse fills a caller-provided array; more headers than this is 431.
const MAX_HEADERS: usize = 64;

/// Content type of the plain-text bodies sent with rejections.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A request the worker will answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method was HEAD: answer with headers only.
    pub head_only: bool,
    /// Request target as sent, e.g. "/_test/slow?ms=200".
    pub path: String,
}

/// Why a request is refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: unparsable head, bad `Content-Length`, EOF mid-request.
    BadRequest,
    /// 408: a read timed out before the head (and body) were complete.
    Timeout,
    /// 413: `Content-Length` > [`MAX_BODY`].
    PayloadTooLarge,
    /// 431: head not complete within [`MAX_HEAD`] bytes, or too many
    /// headers.
    HeadTooLarge,
    /// 405: any method other than GET and HEAD.
    MethodNotAllowed,
    /// 501: any `Transfer-Encoding` (chunked bodies are not supported).
    NotImplemented,
}

impl Rejection {
    /// The status code this rejection is answered with.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest => 400,
            Rejection::MethodNotAllowed => 405,
            Rejection::Timeout => 408,
            Rejection::PayloadTooLarge => 413,
            Rejection::HeadTooLarge => 431,
            Rejection::NotImplemented => 501,
        }
    }

    /// The reason phrase of [`Rejection::status`].
    #[must_use]
    pub fn reason(self) -> &'static str {
        reason_phrase(self.status())
    }
}

/// What [`read_request`] found on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A request to answer with 200.
    Request(Request),
    /// A request to answer with the rejection's status.
    Rejected(Rejection),
    /// The peer closed (EOF) before sending a single byte: nothing to
    /// answer.
    Closed,
}

/// Reads one request head (and discards a Content-Length body up to
/// [`MAX_BODY`]) from `conn`. `buf` is caller-owned scratch so the worker
/// allocates nothing per request for the head. Retries
/// `io::ErrorKind::Interrupted`.
///
/// Returns `Err` only for real I/O errors (ECONNRESET etc.), never for bad
/// input. EOF in the middle of a head or body is `Rejected(BadRequest)`.
///
/// Checks run in this order: the head itself (400/431), framing (501,
/// then 400/413 for `Content-Length`), reading the body (408/400), and
/// only then the method (405). Draining the body before a 405 matters:
/// closing a socket with unread bytes makes Linux send RST, which can
/// destroy the response before the client reads it.
///
/// # Errors
///
/// Any error from `conn` other than `Interrupted`, `WouldBlock` and
/// `TimedOut`, or a reader claiming more bytes than it was given room for.
pub fn read_request<R: Read>(
    conn: &mut R,
    buf: &mut [u8; MAX_HEAD],
) -> io::Result<ReadOutcome> {
    let (head, filled) = match read_head(conn, buf)? {
        Ok(found) => found,
        Err(outcome) => return Ok(outcome),
    };
    // Bytes after the head that came in the same reads are body bytes.
    // Anything past the body (a pipelined request) is ignored: one request
    // per connection.
    let already = filled.saturating_sub(head.len);
    let remaining = head.body_len.saturating_sub(to_u64(already));
    // The head has been copied out, so the whole buffer is free scratch.
    if let Some(rejection) = discard_body(conn, buf, remaining)? {
        return Ok(ReadOutcome::Rejected(rejection));
    }
    Ok(match head.method {
        Method::Get => request(head.path, false),
        Method::Head => request(head.path, true),
        Method::Other => ReadOutcome::Rejected(Rejection::MethodNotAllowed),
    })
}

/// The values the 200 body reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub master_pid: u32,
    pub worker_pid: u32,
    pub worker_age: u64,
    pub generation: u64,
    pub requests: u64,
    pub version: &'static str,
}

/// The JSON body, keys exactly in this order, no spaces, then one "\n":
/// `{"master_pid":1,"worker_pid":2,"worker_age":3,"generation":4,`
/// `"requests":5,"version":"0.1.0"}`.
#[must_use]
pub fn info_body(info: &Info) -> String {
    format!(
        "{{\"master_pid\":{},\"worker_pid\":{},\"worker_age\":{},\
         \"generation\":{},\"requests\":{},\"version\":\"{}\"}}\n",
        info.master_pid,
        info.worker_pid,
        info.worker_age,
        info.generation,
        info.requests,
        json_escape(info.version),
    )
}

/// Writes a complete response with ONE `write_all` of a buffer built in
/// memory, so a response is never interleaved with a partial one and costs
/// a single syscall in the common case. `Content-Length` is `body.len()`
/// even for HEAD (it describes what GET would send); for HEAD no body bytes
/// are written. A 405 also carries `Allow: GET, HEAD`.
///
/// `content_type` comes from the worker's code, not from the peer, so it is
/// written as given.
///
/// # Errors
///
/// Whatever `w.write_all` returns (a timed-out or reset connection).
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let response = build_response(status, content_type, body, head_only);
    w.write_all(&response)
}

/// Writes the response for a rejection: its status and reason, and a
/// one-line text/plain body such as "431 Request Header Fields Too
/// Large\n".
///
/// # Errors
///
/// Whatever `w.write_all` returns, as for [`write_response`].
pub fn write_rejection<W: Write>(w: &mut W, r: Rejection) -> io::Result<()> {
    let body = format!("{} {}\n", r.status(), r.reason());
    // The method may never have been read (or was HEAD with a bad head);
    // the body is small and the connection closes, so always send it.
    write_response(w, r.status(), TEXT_PLAIN, body.as_bytes(), false)
}

/// Reason phrase for the status codes used here; "Unknown" otherwise.
#[must_use]
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        // RFC 7231's name, matching `Rejection::PayloadTooLarge`
        // (RFC 9110 renamed it "Content Too Large").
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The methods the worker tells apart. Methods are case-sensitive
/// (RFC 9110 9.1), so "get" is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

/// What a complete head says, copied out of the buffer so the buffer can
/// be reused to drain the body.
#[derive(Debug)]
struct Head {
    /// Bytes of the head, including the blank line.
    len: usize,
    method: Method,
    path: String,
    /// Declared `Content-Length`, already checked against [`MAX_BODY`].
    body_len: u64,
}

/// The result of parsing the bytes received so far.
enum Parsed {
    /// More bytes are needed.
    Partial,
    Complete(Head),
    Rejected(Rejection),
}

/// The result of one read, with the retry and timeout rules applied.
enum Fill {
    Data(usize),
    Eof,
    TimedOut,
}

fn request(path: String, head_only: bool) -> ReadOutcome {
    ReadOutcome::Request(Request { head_only, path })
}

/// Reads until the head is complete. `Ok(Err(_))` is an outcome that ends
/// the request (closed, rejected); `Ok(Ok(_))` is the head and how many
/// bytes of `buf` are filled.
fn read_head<R: Read>(
    conn: &mut R,
    buf: &mut [u8; MAX_HEAD],
) -> io::Result<Result<(Head, usize), ReadOutcome>> {
    let mut filled = 0;
    loop {
        // Never empty: a full buffer is decided on below, before looping.
        let space = buf.get_mut(filled..).unwrap_or_default();
        let n = match read_some(conn, space)? {
            Fill::Data(n) => n,
            Fill::Eof if filled == 0 => return Ok(Err(ReadOutcome::Closed)),
            Fill::Eof => return Ok(Err(rejected(Rejection::BadRequest))),
            Fill::TimedOut => return Ok(Err(rejected(Rejection::Timeout))),
        };
        filled = filled.saturating_add(n).min(MAX_HEAD);
        let so_far = buf.get(..filled).unwrap_or_default();
        match parse_head(so_far) {
            Parsed::Complete(head) => return Ok(Ok((head, filled))),
            Parsed::Rejected(r) => return Ok(Err(rejected(r))),
            Parsed::Partial if filled >= MAX_HEAD => {
                return Ok(Err(rejected(Rejection::HeadTooLarge)));
            }
            Parsed::Partial => {}
        }
    }
}

fn rejected(r: Rejection) -> ReadOutcome {
    ReadOutcome::Rejected(r)
}

/// Parses the bytes so far. Re-parsing from the start on every read is
/// simple and bounded: at most [`MAX_HEAD`] bytes, and httparse is fast.
fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => check_head(&req, len),
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Rejected(Rejection::HeadTooLarge)
        }
        Err(_) => Parsed::Rejected(Rejection::BadRequest),
    }
}

/// Turns a complete httparse head into a [`Head`], or the reason to
/// refuse it. The method is only classified here; 405 is decided after
/// the body is drained (see [`read_request`]).
fn check_head(req: &httparse::Request<'_, '_>, len: usize) -> Parsed {
    // httparse sets both on Complete; a missing one is still just bad
    // input, not a reason to panic. It also refuses a non-UTF-8 target,
    // so that case arrives here as a parse error (400).
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Rejected(Rejection::BadRequest);
    };
    match body_length(req.headers) {
        Ok(body_len) => Parsed::Complete(Head {
            len,
            method: classify(method),
            path: path.to_owned(),
            body_len,
        }),
        Err(r) => Parsed::Rejected(r),
    }
}

fn classify(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    }
}

/// The body length the headers declare: 0 without `Content-Length`.
/// Any `Transfer-Encoding` wins over everything else (501), because with
/// it present the body's framing is unknown to us.
fn body_length(headers: &[httparse::Header<'_>]) -> Result<u64, Rejection> {
    if headers.iter().any(|h| is_named(h, "transfer-encoding")) {
        return Err(Rejection::NotImplemented);
    }
    let mut lengths = headers.iter().filter(|h| is_named(h, "content-length"));
    let Some(first) = lengths.next() else {
        return Ok(0);
    };
    // Duplicates are refused even when equal: two lengths are a classic
    // request-smuggling vector and no honest client sends them.
    if lengths.next().is_some() {
        return Err(Rejection::BadRequest);
    }
    content_length(first.value)
}

fn is_named(h: &httparse::Header<'_>, name: &str) -> bool {
    h.name.eq_ignore_ascii_case(name)
}

/// Parses a `Content-Length` value: 1*DIGIT, surrounding spaces or tabs
/// allowed. Signs, inner spaces and lists ("5, 5") are 400. A number too
/// large for u64 is still a valid length, just too large: 413.
fn content_length(value: &[u8]) -> Result<u64, Rejection> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Rejection::BadRequest);
    }
    let mut length: u64 = 0;
    for d in digits {
        length = length
            .checked_mul(10)
            .and_then(|l| l.checked_add(u64::from(d - b'0')))
            .ok_or(Rejection::PayloadTooLarge)?;
    }
    if length > MAX_BODY {
        return Err(Rejection::PayloadTooLarge);
    }
    Ok(length)
}

/// Reads and drops `remaining` body bytes, using `scratch` as the target.
/// `Ok(Some(_))` is the rejection when the body does not fully arrive.
fn discard_body<R: Read>(
    conn: &mut R,
    scratch: &mut [u8],
    mut remaining: u64,
) -> io::Result<Option<Rejection>> {
    while remaining > 0 {
        // Read no further than the body; `want` is never 0 here since
        // `scratch` is MAX_HEAD bytes and `remaining` > 0.
        let want = usize::try_from(remaining)
            .map_or(scratch.len(), |r| r.min(scratch.len()));
        let Some(dst) = scratch.get_mut(..want) else {
            return Err(io::Error::other("body scratch buffer is empty"));
        };
        match read_some(conn, dst)? {
            Fill::Data(n) => remaining = remaining.saturating_sub(to_u64(n)),
            Fill::Eof => return Ok(Some(Rejection::BadRequest)),
            Fill::TimedOut => return Ok(Some(Rejection::Timeout)),
        }
    }
    Ok(None)
}

/// One read into `dst` (which must not be empty: a 0-byte read of an
/// empty slice would look like EOF), retrying `Interrupted`.
fn read_some<R: Read>(conn: &mut R, dst: &mut [u8]) -> io::Result<Fill> {
    if dst.is_empty() {
        return Err(io::Error::other("read_some called with no space"));
    }
    loop {
        match conn.read(dst) {
            Ok(0) => return Ok(Fill::Eof),
            Ok(n) if n <= dst.len() => return Ok(Fill::Data(n)),
            // A broken `Read` impl, not bad input; refuse it as an error
            // rather than trust bytes that were never written.
            Ok(_) => {
                return Err(io::Error::other(
                    "reader reported more bytes than the buffer holds",
                ));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(Fill::TimedOut),
            Err(e) => return Err(e),
        }
    }
}

/// Linux `SO_RCVTIMEO` makes read fail with `EAGAIN`, which std reports as
/// `WouldBlock`; other platforms and wrappers say `TimedOut`. Both mean
/// the per-connection timeout expired.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Status line, headers and (unless `head_only`) body, in one buffer.
fn build_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len(),
    );
    if status == Rejection::MethodNotAllowed.status() {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Escapes a string for a JSON string literal. The version is a semver
/// string in practice, but the body must stay valid JSON whatever it is.
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
