//! The HTTP/1.1 side of the `http` sample, free of I/O so that it builds and is unit-tested on
//! the host: [`parse_head`] parses a request head incrementally, and a [`Session`] is one
//! connection's protocol state, fed the bytes the event loop (main.rs) receives and drained
//! of the bytes it sends.

use std::io::Write as _;

/// Longest request head (request line and headers) accepted; longer gets 431 and a close.
pub const HEAD_LIMIT: usize = 16 * 1024;
/// Unprocessed input past which the event loop stops reading a connection: backpressure
/// for clients that pipeline faster than their responses drain. Above `HEAD_LIMIT`, so a
/// head that fits is always read whole.
pub const INPUT_LIMIT: usize = 64 * 1024;
/// Queued output past which `/bytes` stops generating and pipelined requests wait.
const OUTPUT_HIGH: usize = 256 * 1024;
/// Unsent echo bytes past which reading pauses. Large, so that a client that sends its whole
/// body before reading (most do) still gets bodies up to this size echoed without deadlock;
/// a client that reads while it writes can echo any size.
const ECHO_LIMIT: usize = 64 << 20;
/// Largest `/bytes/N`.
pub const MAX_BYTES: u64 = 1 << 30;

/// The deterministic test pattern, one period: byte `i` is `(i * 31 + 7) % 251`.
const PATTERN: [u8; 251] = {
    let mut t = [0u8; 251];
    let mut i = 0;
    while i < 251 {
        t[i] = ((i * 31 + 7) % 251) as u8;
        i += 1;
    }
    t
};

/// Byte `i` of the test pattern.
pub fn pattern_byte(i: u64) -> u8 {
    PATTERN[(i % 251) as usize]
}

/// Appends pattern bytes `offset..offset + len` to `out`.
pub fn extend_pattern(out: &mut Vec<u8>, offset: u64, len: usize) {
    out.reserve(len);
    let mut phase = (offset % 251) as usize;
    let mut left = len;
    while left > 0 {
        let take = left.min(PATTERN.len() - phase);
        out.extend_from_slice(&PATTERN[phase..phase + take]);
        left -= take;
        phase = 0;
    }
}

/// 64-bit FNV-1a, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Why a request head was refused; each maps to a status and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x, or broken syntax: 400.
    Malformed,
    /// The head exceeds [`HEAD_LIMIT`]: 431.
    TooLarge,
    /// `Transfer-Encoding` (chunked bodies) is not supported: 501.
    Unsupported,
}

impl ParseError {
    fn status(self) -> u16 {
        match self {
            ParseError::Malformed => 400,
            ParseError::TooLarge => 431,
            ParseError::Unsupported => 501,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// The `x` of `HTTP/1.x`.
    pub minor: u8,
    pub content_length: u64,
    /// Whether the connection stays open after the response (version default, then the
    /// `Connection` header).
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for an interim response before the body.
    pub expect_continue: bool,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A decimal number of ASCII digits only (no sign, no spaces), without overflow.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// request and the number of bytes it took. Lines may end in CRLF or a bare LF (RFC 9112
/// §2.2), and empty lines before the request line are skipped.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let mut start = 0;
    let mut lines: Vec<&[u8]> = Vec::new();
    let end = loop {
        let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > HEAD_LIMIT {
                Err(ParseError::TooLarge)
            } else {
                Ok(None)
            };
        };
        let next = start + nl + 1;
        if next > HEAD_LIMIT {
            return Err(ParseError::TooLarge);
        }
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start = next;
        if line.is_empty() {
            if lines.is_empty() {
                continue; // leading empty line
            }
            break next;
        }
        lines.push(line);
    };

    let mut parts = lines[0].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed);
    };
    if !is_token(method) || target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::Malformed);
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err(ParseError::Malformed),
    };

    let mut content_length: Option<u64> = None;
    let (mut chunked, mut close, mut keep_alive, mut expect_continue) =
        (false, false, false, false);
    for line in &lines[1..] {
        // A leading space or tab is obsolete line folding, refused (RFC 9112 §5.2).
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ParseError::Malformed);
        };
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);
        if !is_token(name) || value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
            return Err(ParseError::Malformed);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ParseError::Malformed)?;
            // Conflicting lengths are a request-smuggling vector: refuse them.
            if content_length.is_some_and(|m| m != n) {
                return Err(ParseError::Malformed);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if chunked {
        return Err(ParseError::Unsupported);
    }
    let request = Request {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor,
        content_length: content_length.unwrap_or(0),
        keep_alive: !close && (minor == 1 || keep_alive),
        expect_continue: expect_continue && minor == 1,
    };
    Ok(Some((request, end)))
}

/// What a request asks for once its body is in.
#[derive(Debug)]
enum Action {
    Reply(u16, &'static [u8]),
    Bytes(u64),
    Exit(i32),
    /// Reply, then compute forever without a system call (`GET /spin`): output the app
    /// wrote must still reach the client, though the app never waits again.
    Spin,
}

/// Where the bytes of the current request body go.
#[derive(Debug)]
enum Sink {
    Echo,
    Sum(Fnv1a),
    /// Discarded, then the action runs.
    Then(Action),
}

#[derive(Debug)]
enum State {
    /// Waiting for a request head.
    Head,
    /// Consuming a request body.
    Body { remaining: u64, sink: Sink },
    /// Generating `/bytes` output.
    Bytes { offset: u64, end: u64 },
}

/// One connection's protocol state. The event loop calls [`Session::received`] and
/// [`Session::peer_closed`] with what it reads, sends [`Session::output`] and reports it
/// with [`Session::advance_output`], polls for reading while [`Session::wants_read`] and for
/// writing while [`Session::wants_write`], and closes the connection once
/// [`Session::is_done`] (then exits if [`Session::exit_code`] says so).
#[derive(Debug)]
pub struct Session {
    /// Received bytes; the unprocessed ones are `input[in_pos..]`.
    input: Vec<u8>,
    in_pos: usize,
    /// Bytes to send: `output[out_pos..]`.
    output: Vec<u8>,
    out_pos: usize,
    state: State,
    /// The current request's version and keep-alive, for its response.
    minor: u8,
    keep_alive: bool,
    /// No more requests will be read: close once the output has drained.
    closing: bool,
    /// The peer sends no more.
    eof: bool,
    exit: Option<i32>,
    spin: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            input: Vec::new(),
            in_pos: 0,
            output: Vec::new(),
            out_pos: 0,
            state: State::Head,
            minor: 1,
            keep_alive: true,
            closing: false,
            eof: false,
            exit: None,
            spin: false,
        }
    }
}

impl Session {
    /// Feeds received bytes in and processes as much as possible.
    pub fn received(&mut self, data: &[u8]) {
        if self.in_pos == self.input.len() {
            self.input.clear();
            self.in_pos = 0;
        } else if self.in_pos >= self.input.len() / 2 {
            // Compacting only past half keeps the copying amortized O(1) per byte.
            self.input.drain(..self.in_pos);
            self.in_pos = 0;
        }
        self.input.extend_from_slice(data);
        self.process();
    }

    /// The peer has shut down its sending side (read returned 0).
    pub fn peer_closed(&mut self) {
        self.eof = true;
        self.process();
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.output[self.out_pos..]
    }

    /// `n` bytes of [`Session::output`] were sent.
    pub fn advance_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.output.len());
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        }
        self.process();
    }

    pub fn wants_read(&self) -> bool {
        !self.eof && !self.closing && self.unprocessed() < INPUT_LIMIT
    }

    pub fn wants_write(&self) -> bool {
        self.queued() > 0
    }

    /// Nothing more to do: close the connection.
    pub fn is_done(&self) -> bool {
        self.closing && matches!(self.state, State::Head) && self.queued() == 0
    }

    /// The process should exit with this status once this connection is done.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit
    }

    /// The process should compute forever once this connection is done (`GET /spin`).
    pub fn spins_after(&self) -> bool {
        self.spin
    }

    fn unprocessed(&self) -> usize {
        self.input.len() - self.in_pos
    }

    fn queued(&self) -> usize {
        self.output.len() - self.out_pos
    }

    /// Runs the state machine until it needs more input or more room for output.
    fn process(&mut self) {
        if self.out_pos > 0 && self.out_pos >= self.output.len() / 2 {
            self.output.drain(..self.out_pos);
            self.out_pos = 0;
        }
        loop {
            match &mut self.state {
                State::Head => {
                    if self.closing || self.queued() >= OUTPUT_HIGH {
                        return;
                    }
                    match parse_head(&self.input[self.in_pos..]) {
                        Ok(Some((request, used))) => {
                            self.in_pos += used;
                            self.dispatch(request);
                        }
                        Ok(None) => {
                            // A peer that stops sending mid-head gets no response.
                            self.closing |= self.eof;
                            return;
                        }
                        Err(e) => {
                            self.fail(e.status());
                            return;
                        }
                    }
                }
                State::Body { remaining: 0, .. } => {
                    if let State::Body { sink, .. } =
                        std::mem::replace(&mut self.state, State::Head)
                    {
                        self.finish_body(sink);
                    }
                }
                State::Body { remaining, sink } => {
                    let avail = self.input.len() - self.in_pos;
                    if avail == 0 {
                        if self.eof {
                            // Truncated body: send what is queued, then close.
                            self.state = State::Head;
                            self.closing = true;
                        }
                        return;
                    }
                    if matches!(sink, Sink::Echo) && self.output.len() - self.out_pos >= ECHO_LIMIT
                    {
                        return;
                    }
                    let n = avail.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let chunk = &self.input[self.in_pos..self.in_pos + n];
                    match sink {
                        Sink::Echo => self.output.extend_from_slice(chunk),
                        Sink::Sum(hash) => hash.update(chunk),
                        Sink::Then(_) => {}
                    }
                    self.in_pos += n;
                    *remaining -= n as u64;
                }
                State::Bytes { offset, end } => {
                    while *offset < *end && self.output.len() - self.out_pos < OUTPUT_HIGH {
                        let n = (*end - *offset).min(64 * 1024) as usize;
                        extend_pattern(&mut self.output, *offset, n);
                        *offset += n as u64;
                    }
                    if *offset < *end {
                        return;
                    }
                    self.state = State::Head;
                    self.end_response();
                }
            }
        }
    }

    /// Starts serving a parsed request: routes it and moves on to its body.
    fn dispatch(&mut self, request: Request) {
        self.minor = request.minor;
        self.keep_alive = request.keep_alive;
        let path = request.target.split('?').next().unwrap_or_default();
        let get = request.method == "GET";
        let post = request.method == "POST";
        let sink = if get && path == "/" {
            Sink::Then(Action::Reply(200, b"hello from wasmvm\n"))
        } else if get && let Some(n) = path.strip_prefix("/bytes/") {
            match parse_decimal(n.as_bytes()) {
                Some(n) if n <= MAX_BYTES => Sink::Then(Action::Bytes(n)),
                _ => return self.fail(400),
            }
        } else if get && let Some(code) = path.strip_prefix("/exit/") {
            match parse_decimal(code.as_bytes()) {
                Some(code) if code <= 255 => Sink::Then(Action::Exit(code as i32)),
                _ => return self.fail(400),
            }
        } else if get && path == "/spin" {
            Sink::Then(Action::Spin)
        } else if post && path == "/echo" {
            Sink::Echo
        } else if post && path == "/sum" {
            Sink::Sum(Fnv1a::default())
        } else {
            Sink::Then(Action::Reply(404, b"not found\n"))
        };
        if request.expect_continue && request.content_length > 0 {
            self.output
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if matches!(sink, Sink::Echo) {
            // Echo streams: the header goes now, the body as it arrives.
            self.header(200, "application/octet-stream", request.content_length);
        }
        self.state = State::Body {
            remaining: request.content_length,
            sink,
        };
    }

    fn finish_body(&mut self, sink: Sink) {
        match sink {
            Sink::Echo => self.end_response(),
            Sink::Sum(hash) => {
                let body = format!("{:016x}\n", hash.finish());
                self.reply(200, body.as_bytes());
            }
            Sink::Then(Action::Reply(status, body)) => self.reply(status, body),
            Sink::Then(Action::Bytes(n)) => {
                self.header(200, "application/octet-stream", n);
                self.state = State::Bytes { offset: 0, end: n };
            }
            Sink::Then(Action::Exit(code)) => {
                self.keep_alive = false;
                self.exit = Some(code);
                self.reply(200, b"bye\n");
            }
            Sink::Then(Action::Spin) => {
                self.keep_alive = false;
                self.spin = true;
                self.reply(200, b"spinning\n");
            }
        }
    }

    /// Refuses the request with `status` and closes after the response.
    fn fail(&mut self, status: u16) {
        self.keep_alive = false;
        self.state = State::Head;
        let body = format!("{}\n", reason(status));
        self.reply(status, body.as_bytes());
    }

    fn reply(&mut self, status: u16, body: &[u8]) {
        self.header(status, "text/plain", body.len() as u64);
        self.output.extend_from_slice(body);
        self.end_response();
    }

    fn end_response(&mut self) {
        self.closing |= !self.keep_alive;
    }

    fn header(&mut self, status: u16, content_type: &str, len: u64) {
        let connection = match (self.keep_alive, self.minor) {
            (false, _) => "Connection: close\r\n",
            (true, 0) => "Connection: keep-alive\r\n",
            (true, _) => "",
        };
        // Writing to a Vec cannot fail.
        let _ = write!(
            self.output,
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n{connection}\r\n",
            reason(status)
        );
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests;
