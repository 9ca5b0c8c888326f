//! The practical limit for upgrader's design: one listening socket bound
//! once and shared by N forked single-threaded processes, each blocking in
//! accept(2), reading until the end of the request head, writing one
//! response and closing. No parsing, no timeouts, no heartbeat, no poll.
//!
//! The response is byte-for-byte the format of upgrader's built-in worker
//! (same status line, same headers in the same order, the same JSON keys,
//! so the body has the same length for the same pids and counts):
//!
//! ```text
//! HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n
//! Content-Length: N\r\nConnection: close\r\n\r\n
//! {"master_pid":..,"worker_pid":..,"worker_age":..,"generation":1,
//! "requests":..,"version":"0.1.0"}\n
//! ```
//!
//! Usage: `raw-loop HOST:PORT [PROCESSES]` (default 1 process). The
//! parent is process 1 of N; the others are forked children that die with
//! it (`PR_SET_PDEATHSIG`). Stop the whole process group to stop it.
//!
//! Only std: `fork`, `prctl` and `getppid` come from the C library that std
//! links anyway.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process;

unsafe extern "C" {
    fn fork() -> i32;
    fn getppid() -> i32;
    fn prctl(option: i32, ...) -> i32;
}

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: i32 = 9;
/// Same limit as upgrader's worker: a longer head is answered all the same.
const HEAD_LIMIT: usize = 8192;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: raw-loop HOST:PORT [PROCESSES]");
        process::exit(2);
    };
    let procs: u64 = match args.next().map(|n| n.parse()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            eprintln!("raw-loop: PROCESSES must be a number >= 1");
            process::exit(2);
        }
    };
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("raw-loop: bind {addr}: {e}");
        process::exit(1);
    });
    let master = process::id();
    let mut age = 1;
    for n in 2..=procs {
        // SAFETY: still single-threaded; the child only continues with
        // plain std code.
        let pid = unsafe { fork() };
        if pid < 0 {
            eprintln!("raw-loop: fork failed");
            process::exit(1);
        }
        if pid == 0 {
            // SAFETY: plain prctl/getppid calls with valid arguments.
            unsafe {
                prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong);
                if getppid() as u32 != master {
                    process::exit(0);
                }
            }
            age = n;
            break;
        }
    }
    eprintln!(
        "raw-loop: process {} ({age}/{procs}) accepting on {addr}",
        process::id()
    );
    serve(&listener, master, age);
}

fn serve(listener: &TcpListener, master: u32, age: u64) -> ! {
    let me = process::id();
    let mut head = [0u8; HEAD_LIMIT];
    let mut body = String::with_capacity(160);
    let mut response: Vec<u8> = Vec::with_capacity(320);
    let mut served: u64 = 0;
    loop {
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        served += 1;
        body.clear();
        {
            use std::fmt::Write as _;
            let _ = writeln!(
                body,
                "{{\"master_pid\":{master},\"worker_pid\":{me},\
                 \"worker_age\":{age},\"generation\":1,\"requests\":{served},\
                 \"version\":\"0.1.0\"}}"
            );
        }
        response.clear();
        let _ = write!(
            response,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = answer(stream, &mut head, &response);
    }
}

/// Reads until the end of the request head, writes the response; the
/// connection closes when `stream` drops.
fn answer(
    mut stream: TcpStream,
    head: &mut [u8],
    response: &[u8],
) -> std::io::Result<()> {
    let mut len = 0;
    loop {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            return Ok(());
        }
        let from = len.saturating_sub(3);
        len += n;
        if len == head.len()
            || head[from..len].windows(4).any(|w| w == b"\r\n\r\n")
        {
            break;
        }
    }
    stream.write_all(response)
}
