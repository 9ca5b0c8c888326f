//! Unit and property tests of the HTTP module.

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
        assert_eq!(read_bytes(case), rej(Rejection::BadRequest), "{case:?}");
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
    let huge = b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\
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
    write_response(&mut w, 200, "application/json", b"{}\n", false).unwrap();
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
    write_response(&mut w, 200, "application/json", b"{}\n", true).unwrap();
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
    let body = prop::option::of(prop::collection::vec(any::<u8>(), 0..200));
    (method, path, headers, body).prop_map(|(m, p, hs, body)| {
        let mut req = format!("{m} {p} HTTP/1.1\r\n").into_bytes();
        for (name, value) in hs {
            let name = match name.to_ascii_lowercase().as_str() {
                "content-length" | "transfer-encoding" => "X-Skip".into(),
                _ => name,
            };
            let value = value.trim();
            req.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
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
}

// The structured properties: fewer cases, each explores more.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

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
