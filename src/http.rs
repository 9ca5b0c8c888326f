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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::io::Cursor;

    /// One scripted step of a [`Script`] reader.
    enum Step {
        Data(Vec<u8>),
        Fail(ErrorKind),
    }

    /// A reader that plays back data and errors in order, then EOF. A data
    /// step larger than the caller's buffer is delivered across reads.
    struct Script {
        steps: VecDeque<Step>,
    }

    impl Script {
        fn new(steps: Vec<Step>) -> Self {
            Script {
                steps: steps.into(),
            }
        }
    }

    impl Read for Script {
        fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
            match self.steps.pop_front() {
                None => Ok(0),
                Some(Step::Fail(kind)) => Err(io::Error::from(kind)),
                Some(Step::Data(mut data)) => {
                    let n = data.len().min(dst.len());
                    dst[..n].copy_from_slice(&data[..n]);
                    if n < data.len() {
                        self.steps.push_front(Step::Data(data.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    /// Delivers at most one byte per read.
    struct OneByte(Cursor<Vec<u8>>);

    impl Read for OneByte {
        fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
            let n = dst.len().min(1);
            self.0.read(&mut dst[..n])
        }
    }

    /// Counts `write` calls, to check a response goes out in one piece.
    #[derive(Default)]
    struct CountingWriter {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for CountingWriter {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read_from<R: Read>(mut conn: R) -> io::Result<ReadOutcome> {
        let mut buf = [0u8; MAX_HEAD];
        read_request(&mut conn, &mut buf)
    }

    fn read_bytes(bytes: &[u8]) -> ReadOutcome {
        read_from(Cursor::new(bytes.to_vec())).expect("cursor never fails")
    }

    fn get(path: &str) -> ReadOutcome {
        request(path.to_owned(), false)
    }

    fn rej(r: Rejection) -> ReadOutcome {
        ReadOutcome::Rejected(r)
    }

    /// A complete head of exactly `total` bytes, padded in one header.
    fn head_of_len(total: usize) -> Vec<u8> {
        let start = b"GET / HTTP/1.1\r\nX-Pad: ";
        let end = b"\r\n\r\n";
        let pad = total - start.len() - end.len();
        let mut head = start.to_vec();
        head.extend(std::iter::repeat_n(b'a', pad));
        head.extend_from_slice(end);
        assert_eq!(head.len(), total);
        head
    }

    fn with_body(method: &str, body: &[u8]) -> Vec<u8> {
        let mut req = format!(
            "{method} /upload HTTP/1.1\r\nHost: x\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    }

    #[test]
    fn get_parses() {
        let out = read_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(out, get("/"));
    }

    #[test]
    fn head_parses_as_head_only() {
        let out = read_bytes(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(out, request("/x".to_owned(), true));
    }

    #[test]
    fn path_is_preserved_as_sent() {
        let out = read_bytes(b"GET /_test/slow?ms=200 HTTP/1.1\r\n\r\n");
        assert_eq!(out, get("/_test/slow?ms=200"));
    }

    #[test]
    fn host_is_not_required() {
        assert_eq!(read_bytes(b"GET /a HTTP/1.1\r\n\r\n"), get("/a"));
        assert_eq!(read_bytes(b"GET /b HTTP/1.0\r\n\r\n"), get("/b"));
    }

    #[test]
    fn other_methods_are_405() {
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get", "Head"] {
            let req = format!("{m} / HTTP/1.1\r\n\r\n");
            let out = read_bytes(req.as_bytes());
            assert_eq!(out, rej(Rejection::MethodNotAllowed), "{m}");
        }
    }

    #[test]
    fn post_body_is_drained_before_405() {
        let req = with_body("POST", b"hello");
        let mut conn = Cursor::new(req.clone());
        let mut buf = [0u8; MAX_HEAD];
        let out = read_request(&mut conn, &mut buf).unwrap();
        assert_eq!(out, rej(Rejection::MethodNotAllowed));
        assert_eq!(conn.position(), req.len() as u64);
    }

    #[test]
    fn head_over_limit_is_431() {
        assert_eq!(
            read_bytes(&head_of_len(MAX_HEAD + 1)),
            rej(Rejection::HeadTooLarge)
        );
        // A head that never ends, sent slowly, is cut off at the limit.
        let endless = head_of_len(3 * MAX_HEAD);
        let out = read_from(OneByte(Cursor::new(endless))).unwrap();
        assert_eq!(out, rej(Rejection::HeadTooLarge));
    }

    #[test]
    fn long_request_line_is_431() {
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(read_bytes(&req), rej(Rejection::HeadTooLarge));
    }

    #[test]
    fn head_exactly_at_limit_is_fine() {
        assert_eq!(read_bytes(&head_of_len(MAX_HEAD)), get("/"));
    }

    #[test]
    fn head_at_limit_with_body_after_it_is_fine() {
        // Ending the head with Content-Length instead of the bare blank
        // line adds 19 bytes; body bytes after it do not count as head.
        let mut req = head_of_len(MAX_HEAD - 18);
        req.truncate(req.len() - 2);
        req.extend_from_slice(b"Content-Length: 2\r\n\r\n");
        let head_len = req.len();
        req.extend_from_slice(b"ok");
        assert_eq!(head_len, MAX_HEAD + 1);
        assert_eq!(read_bytes(&req), rej(Rejection::HeadTooLarge));

        let mut req = head_of_len(MAX_HEAD - 19);
        req.truncate(req.len() - 2);
        req.extend_from_slice(b"Content-Length: 2\r\n\r\n");
        assert_eq!(req.len(), MAX_HEAD);
        req.extend_from_slice(b"ok");
        let mut conn = Cursor::new(req.clone());
        let mut buf = [0u8; MAX_HEAD];
        let out = read_request(&mut conn, &mut buf).unwrap();
        assert_eq!(out, get("/"));
        assert_eq!(conn.position(), req.len() as u64);
    }

    #[test]
    fn too_many_headers_is_431_and_64_is_fine() {
        let build = |n: usize| {
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            req
        };
        assert_eq!(read_bytes(&build(64)), get("/"));
        assert_eq!(read_bytes(&build(65)), rej(Rejection::HeadTooLarge));
    }

    #[test]
    fn bad_bytes_are_400() {
        let cases: [&[u8]; 7] = [
            b"\x00\x01\x02\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for case in cases {
            assert_eq!(
                read_bytes(case),
                rej(Rejection::BadRequest),
                "{case:?}"
            );
        }
    }

    #[test]
    fn non_utf8_path_is_400() {
        let out = read_bytes(b"GET /\xff\xfe HTTP/1.1\r\n\r\n");
        assert_eq!(out, rej(Rejection::BadRequest));
    }

    #[test]
    fn content_length_body_is_discarded() {
        let req = with_body("GET", b"0123456789");
        let mut conn = Cursor::new(req.clone());
        let mut buf = [0u8; MAX_HEAD];
        let out = read_request(&mut conn, &mut buf).unwrap();
        assert_eq!(out, get("/upload"));
        assert_eq!(conn.position(), req.len() as u64);
    }

    #[test]
    fn body_in_later_reads_is_discarded() {
        let head = b"GET / HTTP/1.1\r\nContent-Length: 20000\r\n\r\n";
        let conn = Script::new(vec![
            Step::Data(head.to_vec()),
            Step::Fail(ErrorKind::Interrupted),
            Step::Data(vec![b'x'; 12_000]),
            Step::Data(vec![b'y'; 8_000]),
            Step::Data(b"NEXT REQUEST".to_vec()),
        ]);
        assert_eq!(read_from(conn).unwrap(), get("/"));
    }

    #[test]
    fn body_of_exactly_max_body_is_fine() {
        let body = vec![b'z'; MAX_BODY as usize];
        assert_eq!(read_bytes(&with_body("GET", &body)), get("/upload"));
    }

    #[test]
    fn body_over_max_body_is_413() {
        let body = vec![b'z'; MAX_BODY as usize + 1];
        let out = read_bytes(&with_body("GET", &body));
        assert_eq!(out, rej(Rejection::PayloadTooLarge));
        let huge =
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\
                     \r\n\r\n";
        assert_eq!(read_bytes(huge), rej(Rejection::PayloadTooLarge));
    }

    #[test]
    fn bad_or_duplicate_content_length_is_400() {
        let values = ["abc", "-1", "+5", "1 2", "5, 5", "0x10", "", "1.0"];
        for v in values {
            let req = format!("GET / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
            let out = read_bytes(req.as_bytes());
            assert_eq!(out, rej(Rejection::BadRequest), "{v:?}");
        }
        let dup = b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\
                    content-length: 0\r\n\r\n";
        assert_eq!(read_bytes(dup), rej(Rejection::BadRequest));
    }

    #[test]
    fn content_length_tolerates_surrounding_whitespace() {
        let req = b"GET / HTTP/1.1\r\ncontent-LENGTH: \t2 \r\n\r\nok";
        assert_eq!(read_bytes(req), get("/"));
    }

    #[test]
    fn transfer_encoding_is_501() {
        for te in ["chunked", "identity", "gzip, chunked"] {
            let req = format!(
                "POST / HTTP/1.1\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: {te}\r\n\r\n"
            );
            let out = read_bytes(req.as_bytes());
            assert_eq!(out, rej(Rejection::NotImplemented), "{te}");
        }
    }

    #[test]
    fn would_block_or_timed_out_is_408() {
        for kind in [ErrorKind::WouldBlock, ErrorKind::TimedOut] {
            let at_start = Script::new(vec![Step::Fail(kind)]);
            let out = read_from(at_start).unwrap();
            assert_eq!(out, rej(Rejection::Timeout));

            let mid_head = Script::new(vec![
                Step::Data(b"GET / HT".to_vec()),
                Step::Fail(kind),
            ]);
            assert_eq!(read_from(mid_head).unwrap(), rej(Rejection::Timeout));

            let req = with_body("GET", b"abc");
            let mid_body = Script::new(vec![
                Step::Data(req[..req.len() - 1].to_vec()),
                Step::Fail(kind),
            ]);
            assert_eq!(read_from(mid_body).unwrap(), rej(Rejection::Timeout));
        }
    }

    #[test]
    fn interrupted_is_retried() {
        let conn = Script::new(vec![
            Step::Fail(ErrorKind::Interrupted),
            Step::Data(b"GET /i HTTP/1.1\r\n".to_vec()),
            Step::Fail(ErrorKind::Interrupted),
            Step::Data(b"\r\n".to_vec()),
        ]);
        assert_eq!(read_from(conn).unwrap(), get("/i"));
    }

    #[test]
    fn real_io_errors_are_err() {
        let conn = Script::new(vec![
            Step::Data(b"GET / HTTP/1.1\r\n".to_vec()),
            Step::Fail(ErrorKind::ConnectionReset),
        ]);
        let err = read_from(conn).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    }

    #[test]
    fn one_byte_at_a_time_works() {
        let req = with_body("HEAD", b"body!");
        let out = read_from(OneByte(Cursor::new(req))).unwrap();
        assert_eq!(out, request("/upload".to_owned(), true));
    }

    #[test]
    fn eof_at_start_is_closed() {
        assert_eq!(read_bytes(b""), ReadOutcome::Closed);
    }

    #[test]
    fn eof_mid_head_or_body_is_400() {
        let mid_head = read_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(mid_head, rej(Rejection::BadRequest));
        let req = with_body("GET", b"0123456789");
        let mid_body = read_bytes(&req[..req.len() - 1]);
        assert_eq!(mid_body, rej(Rejection::BadRequest));
    }

    #[test]
    fn lying_reader_is_an_error_not_a_panic() {
        struct Liar;
        impl Read for Liar {
            fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
                Ok(dst.len() + 1)
            }
        }
        assert!(read_from(Liar).is_err());
    }

    #[test]
    fn info_body_is_exact() {
        let info = Info {
            master_pid: 1,
            worker_pid: 2,
            worker_age: 3,
            generation: 4,
            requests: 5,
            version: "0.1.0",
        };
        assert_eq!(
            info_body(&info),
            "{\"master_pid\":1,\"worker_pid\":2,\"worker_age\":3,\
             \"generation\":4,\"requests\":5,\"version\":\"0.1.0\"}\n"
        );
    }

    #[test]
    fn info_body_escapes_version() {
        let info = Info {
            master_pid: 0,
            worker_pid: u32::MAX,
            worker_age: u64::MAX,
            generation: 0,
            requests: 0,
            version: "1\"2\\3\n",
        };
        let body = info_body(&info);
        assert!(body.contains("\"worker_age\":18446744073709551615,"));
        assert!(body.ends_with("\"version\":\"1\\\"2\\\\3\\u000a\"}\n"));
    }

    #[test]
    fn write_response_is_exact_and_one_write() {
        let mut w = CountingWriter::default();
        write_response(&mut w, 200, "application/json", b"{}\n", false)
            .unwrap();
        assert_eq!(
            w.bytes,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Content-Length: 3\r\nConnection: close\r\n\r\n{}\n"
        );
        assert_eq!(w.writes, 1);
    }

    #[test]
    fn head_response_has_length_but_no_body() {
        let mut w = Vec::new();
        write_response(&mut w, 200, "application/json", b"{}\n", true)
            .unwrap();
        assert_eq!(
            w,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Content-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn rejections_are_written_with_status_and_text_body() {
        let mut w = Vec::new();
        write_rejection(&mut w, Rejection::HeadTooLarge).unwrap();
        let body = "431 Request Header Fields Too Large\n";
        let expected = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(w).unwrap(), expected);
    }

    #[test]
    fn only_405_carries_allow() {
        let mut w = Vec::new();
        write_rejection(&mut w, Rejection::MethodNotAllowed).unwrap();
        let text = String::from_utf8(w).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.ends_with("\r\n\r\n405 Method Not Allowed\n"));

        let mut w = Vec::new();
        write_rejection(&mut w, Rejection::BadRequest).unwrap();
        assert!(!String::from_utf8(w).unwrap().contains("Allow:"));
    }

    #[test]
    fn statuses_and_reasons() {
        let table = [
            (Rejection::BadRequest, 400, "Bad Request"),
            (Rejection::MethodNotAllowed, 405, "Method Not Allowed"),
            (Rejection::Timeout, 408, "Request Timeout"),
            (Rejection::PayloadTooLarge, 413, "Payload Too Large"),
            (
                Rejection::HeadTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (Rejection::NotImplemented, 501, "Not Implemented"),
        ];
        for (r, status, reason) in table {
            assert_eq!((r.status(), r.reason()), (status, reason));
        }
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(500), "Internal Server Error");
        assert_eq!(reason_phrase(503), "Service Unavailable");
        assert_eq!(reason_phrase(418), "Unknown");
    }

    /// What any outcome of reading `input` from a non-failing, never
    /// timing-out reader must look like.
    fn check_outcome(input: &[u8], out: &ReadOutcome) {
        match out {
            ReadOutcome::Closed => assert!(input.is_empty()),
            ReadOutcome::Rejected(r) => {
                assert!(!input.is_empty());
                assert_ne!(*r, Rejection::Timeout);
                assert_ne!(r.reason(), "Unknown");
            }
            ReadOutcome::Request(req) => {
                assert!(!req.path.is_empty());
                assert!(req.path.len() < MAX_HEAD);
                assert!(req.path.bytes().all(|b| b > b' ' && b != 0x7f));
                assert!(input.len() >= req.path.len());
            }
        }
    }

    /// A valid request with a random method, target, headers and body.
    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]);
        let path = "/[a-zA-Z0-9_./?=&%-]{0,40}";
        let header = ("[A-Za-z][A-Za-z-]{0,19}", "[ -~]{0,40}");
        let headers = prop::collection::vec(header, 0..8);
        let body =
            prop::option::of(prop::collection::vec(any::<u8>(), 0..200));
        (method, path, headers, body).prop_map(|(m, p, hs, body)| {
            let mut req = format!("{m} {p} HTTP/1.1\r\n").into_bytes();
            for (name, value) in hs {
                let name = match name.to_ascii_lowercase().as_str() {
                    "content-length" | "transfer-encoding" => "X-Skip".into(),
                    _ => name,
                };
                let value = value.trim();
                req.extend_from_slice(
                    format!("{name}: {value}\r\n").as_bytes(),
                );
            }
            if let Some(body) = &body {
                let cl = format!("Content-Length: {}\r\n", body.len());
                req.extend_from_slice(cl.as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(body.as_deref().unwrap_or_default());
            req
        })
    }

    /// Applies (op, position, byte) edits: overwrite, insert, delete,
    /// truncate. Positions wrap, so any triple is a valid edit.
    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(op, pos, byte) in edits {
            let len = bytes.len();
            let at = if len == 0 { 0 } else { pos % len };
            match op % 4 {
                0 if len > 0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if len > 0 => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {}
            }
        }
        bytes
    }

    /// Splits `input` into reads of the given sizes (cycled), with an
    /// Interrupted before every chunk whose size is even.
    fn chunked(input: &[u8], sizes: &[usize]) -> Script {
        let mut steps = Vec::new();
        let mut rest = input;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            if size % 2 == 0 {
                steps.push(Step::Fail(ErrorKind::Interrupted));
            }
            let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
            steps.push(Step::Data(chunk.to_vec()));
            rest = tail;
        }
        Script::new(steps)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn random_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..MAX_HEAD + 512),
        ) {
            let out = read_from(Cursor::new(input.clone()));
            let out = out.expect("an in-memory reader never fails");
            check_outcome(&input, &out);
        }

        #[test]
        fn mutated_requests_never_panic(
            req in valid_request(),
            edits in prop::collection::vec(
                (any::<u8>(), any::<usize>(), any::<u8>()),
                0..6,
            ),
        ) {
            let input = mutate(req, &edits);
            let out = read_from(Cursor::new(input.clone()));
            let out = out.expect("an in-memory reader never fails");
            check_outcome(&input, &out);
        }

        #[test]
        fn valid_requests_are_answered(req in valid_request()) {
            let out = read_bytes(&req);
            let get_or_head = req.starts_with(b"GET ")
                || req.starts_with(b"HEAD ");
            match out {
                ReadOutcome::Request(r) => {
                    prop_assert!(get_or_head);
                    prop_assert_eq!(r.head_only, req.starts_with(b"HEAD "));
                }
                other => {
                    prop_assert!(!get_or_head);
                    prop_assert_eq!(
                        other,
                        rej(Rejection::MethodNotAllowed)
                    );
                }
            }
        }

        #[test]
        fn how_bytes_arrive_does_not_matter(
            req in valid_request(),
            edits in prop::collection::vec(
                (any::<u8>(), any::<usize>(), any::<u8>()),
                0..3,
            ),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let input = mutate(req, &edits);
            let whole = read_bytes(&input);
            let pieces = read_from(chunked(&input, &sizes))
                .expect("a scripted reader without errors never fails");
            check_outcome(&input, &pieces);
            prop_assert_eq!(whole, pieces);
        }
    }
}
