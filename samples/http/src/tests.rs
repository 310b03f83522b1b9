use super::*;

fn parse(s: &str) -> Result<Option<(Request, usize)>, ParseError> {
    parse_head(s.as_bytes())
}

fn req(s: &str) -> Request {
    parse(s).unwrap().unwrap().0
}

/// Sends all queued output (in pieces of at most `step`), as a fast client would read it.
fn drain_by(s: &mut Session, step: usize) -> Vec<u8> {
    let mut all = Vec::new();
    while s.wants_write() {
        let n = s.output().len().min(step);
        all.extend_from_slice(&s.output()[..n]);
        s.advance_output(n);
        check_invariant(s);
    }
    all
}

fn drain(s: &mut Session) -> Vec<u8> {
    drain_by(s, usize::MAX)
}

/// A session that is not done must be waiting on something, or the event loop would stall.
fn check_invariant(s: &Session) {
    assert!(
        s.is_done() || s.wants_read() || s.wants_write(),
        "stalled session: {s:?}"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const HELLO: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nhello from wasmvm\n";

#[test]
fn parses_a_simple_request() {
    let head = "GET /bytes/10?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    let (r, used) = parse(&format!("{head}hello")).unwrap().unwrap();
    assert_eq!(used, head.len());
    assert_eq!(
        r,
        Request {
            method: "GET".into(),
            target: "/bytes/10?x=1".into(),
            minor: 1,
            content_length: 5,
            keep_alive: true,
            expect_continue: false,
        }
    );
}

#[test]
fn every_prefix_is_incomplete() {
    let head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
    for i in 0..head.len() {
        assert_eq!(parse(&head[..i]), Ok(None), "prefix {i}");
    }
    assert!(parse(head).unwrap().is_some());
}

#[test]
fn bare_lf_and_leading_empty_lines() {
    let s = "\r\n\nGET / HTTP/1.0\nConnection: keep-alive\n\nrest";
    let (r, used) = parse(s).unwrap().unwrap();
    assert_eq!(&s[used..], "rest");
    assert_eq!(r.minor, 0);
    assert!(r.keep_alive);
}

#[test]
fn connection_semantics() {
    assert!(req("GET / HTTP/1.1\r\n\r\n").keep_alive);
    assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!req("GET / HTTP/1.1\r\nconnection:  Upgrade , CLOSE\r\n\r\n").keep_alive);
    assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(req("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(!req("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
}

#[test]
fn content_length_rules() {
    assert_eq!(
        req("POST / HTTP/1.1\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n").content_length,
        7
    );
    assert_eq!(
        req("POST / HTTP/1.1\r\nContent-Length:\t42 \r\n\r\n").content_length,
        42
    );
    for bad in [
        "-1",
        "+1",
        "1 2",
        "0x10",
        "",
        "abc",
        "99999999999999999999",
        "1,1",
    ] {
        let s = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(parse(&s), Err(ParseError::Malformed), "{bad:?}");
    }
    assert_eq!(
        parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Err(ParseError::Malformed)
    );
    assert_eq!(
        parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(ParseError::Unsupported)
    );
}

#[test]
fn malformed_heads() {
    for bad in [
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
        "GET /é HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nName : v\r\n\r\n",
        "GET / HTTP/1.1\r\n: v\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
    ] {
        assert_eq!(parse(bad), Err(ParseError::Malformed), "{bad:?}");
    }
    // A TLS ClientHello sent to the plain-text port.
    assert_eq!(
        parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n"),
        Err(ParseError::Malformed)
    );
    // Non-ASCII header values (obs-text) are allowed.
    assert!(
        parse("GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n")
            .unwrap()
            .is_some()
    );
}

#[test]
fn head_size_limit() {
    let filler = format!("X: {}\r\n", "a".repeat(100));
    let mut head = String::from("GET / HTTP/1.1\r\n");
    while head.len() + filler.len() + 2 <= HEAD_LIMIT {
        head.push_str(&filler);
    }
    head.push_str("\r\n");
    assert!(parse(&head).unwrap().is_some(), "a head within the limit");
    let big = format!(
        "GET / HTTP/1.1\r\n{}",
        filler.repeat(HEAD_LIMIT / filler.len() + 1)
    );
    assert_eq!(parse(&big), Err(ParseError::TooLarge));
    // No newline at all: refused once past the limit, not buffered forever.
    assert_eq!(parse(&"G".repeat(HEAD_LIMIT)), Ok(None));
    assert_eq!(
        parse(&"G".repeat(HEAD_LIMIT + 1)),
        Err(ParseError::TooLarge)
    );
}

#[test]
fn pattern_and_fnv() {
    let mut v = Vec::new();
    extend_pattern(&mut v, 0, 1000);
    extend_pattern(&mut v, 1000, 600);
    for (i, &b) in v.iter().enumerate() {
        assert_eq!(b as u64, (i as u64 * 31 + 7) % 251);
        assert_eq!(b, pattern_byte(i as u64));
    }
    let fnv = |s: &[u8]| {
        let mut h = Fnv1a::default();
        h.update(s);
        h.finish()
    };
    assert_eq!(fnv(b""), 0xcbf29ce484222325);
    assert_eq!(fnv(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv(b"foobar"), 0x85944171f73967e8);
}

#[test]
fn hello_keep_alive_and_pipelining() {
    let mut s = Session::default();
    s.received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(text(&drain(&mut s)), HELLO.repeat(2));
    assert!(s.wants_read() && !s.is_done());
    // One byte at a time.
    for &b in b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" {
        s.received(&[b]);
        check_invariant(&s);
    }
    let out = text(&drain(&mut s));
    assert!(out.contains("Connection: close\r\n") && out.ends_with("hello from wasmvm\n"));
    assert!(s.is_done());
}

#[test]
fn http10_gets_its_connection_header() {
    let mut s = Session::default();
    s.received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(text(&drain(&mut s)).contains("Connection: keep-alive\r\n"));
    assert!(!s.is_done());
    s.received(b"GET / HTTP/1.0\r\n\r\n");
    assert!(text(&drain(&mut s)).contains("Connection: close\r\n"));
    assert!(s.is_done());
}

#[test]
fn bytes_streams_with_bounded_buffering() {
    let mut s = Session::default();
    let n = 3_000_000u64;
    s.received(format!("GET /bytes/{n} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n").as_bytes());
    let mut all = Vec::new();
    while s.wants_write() {
        assert!(s.output().len() <= OUTPUT_HIGH + 64 * 1024);
        let k = s.output().len().min(10_007);
        all.extend_from_slice(&s.output()[..k]);
        s.advance_output(k);
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    );
    assert!(all.starts_with(head.as_bytes()));
    let body = &all[head.len()..head.len() + n as usize];
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64))
    );
    assert_eq!(text(&all[head.len() + n as usize..]), HELLO);

    let mut s = Session::default();
    s.received(b"GET /bytes/0 HTTP/1.1\r\n\r\n");
    assert!(text(&drain(&mut s)).ends_with("Content-Length: 0\r\n\r\n"));
}

#[test]
fn bytes_and_exit_arguments_are_checked() {
    for bad in [
        "/bytes/",
        "/bytes/-1",
        "/bytes/1x",
        "/bytes/1073741825",
        "/bytes/99999999999999999999999",
        "/exit/",
        "/exit/256",
        "/exit/-1",
    ] {
        let mut s = Session::default();
        s.received(format!("GET {bad} HTTP/1.1\r\n\r\n").as_bytes());
        let out = text(&drain(&mut s));
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad}: {out}"
        );
        assert!(s.is_done() && s.exit_code().is_none());
    }
    let mut s = Session::default();
    s.received(b"GET /bytes/1073741824 HTTP/1.1\r\n\r\n");
    assert!(text(s.output()).contains("Content-Length: 1073741824\r\n"));
}

#[test]
fn echo_streams_the_body_back() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut s = Session::default();
    s.received(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = drain(&mut s);
    for chunk in body.chunks(777) {
        s.received(chunk);
        out.extend(drain_by(&mut s, 500));
    }
    s.received(b"GET / HTTP/1.1\r\n\r\n");
    out.extend(drain(&mut s));
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut want = head.into_bytes();
    want.extend_from_slice(&body);
    want.extend_from_slice(HELLO.as_bytes());
    assert!(out == want);
}

#[test]
fn echo_keeps_reading_while_the_client_is_not() {
    // A client that writes the whole body before reading must not deadlock.
    let mut s = Session::default();
    let n = 4 * INPUT_LIMIT;
    s.received(format!("POST /echo HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").as_bytes());
    let chunk = vec![b'z'; 4096];
    for _ in 0..n / chunk.len() {
        assert!(s.wants_read());
        s.received(&chunk);
    }
    assert_eq!(drain(&mut s).iter().filter(|&&b| b == b'z').count(), n);
}

#[test]
fn sum_hashes_the_body() {
    let mut s = Session::default();
    s.received(b"POST /sum HTTP/1.1\r\nContent-Length: 6\r\n\r\nfoo");
    assert!(!s.wants_write());
    s.received(b"barGET / HTTP/1.1\r\n\r\n");
    let out = text(&drain(&mut s));
    assert_eq!(
        out,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\n85944171f73967e8\n{HELLO}"
        )
    );
    let mut s = Session::default();
    s.received(b"POST /sum HTTP/1.1\r\n\r\n");
    assert!(text(&drain(&mut s)).ends_with("\r\n\r\ncbf29ce484222325\n"));
}

#[test]
fn exit_replies_then_asks_to_exit() {
    let mut s = Session::default();
    s.received(b"GET /exit/7 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(s.exit_code(), Some(7));
    assert!(!s.is_done(), "the reply is not sent yet");
    let out = text(&drain(&mut s));
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbye\n"
    );
    assert!(s.is_done());
}

#[test]
fn spin_replies_closes_and_asks_to_spin() {
    let mut s = Session::default();
    s.received(b"GET /spin HTTP/1.1\r\n\r\n");
    assert!(s.spins_after() && s.exit_code().is_none());
    let out = text(&drain(&mut s));
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nspinning\n"
    );
    assert!(s.is_done());
}

#[test]
fn not_found_discards_its_body() {
    let mut s = Session::default();
    s.received(b"PUT /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET");
    assert!(!s.wants_write(), "the reply waits for the body");
    s.received(b" /GET / HTTP/1.1\r\n\r\n");
    let out = text(&drain(&mut s));
    // The body ("GET /") was skipped; the request after it was served.
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"));
    assert!(out.ends_with(&format!("not found\n{HELLO}")));
    s.received(b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n");
    let out = text(&drain(&mut s));
    assert!(out.starts_with(HELLO) && out[HELLO.len()..].starts_with("HTTP/1.1 404"));
}

#[test]
fn bad_requests_get_status_and_close() {
    for (input, status) in [
        ("BLAH\r\n\r\n", "400 Bad Request"),
        (
            "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "501 Not Implemented",
        ),
    ] {
        let mut s = Session::default();
        s.received(input.as_bytes());
        s.received(b"GET / HTTP/1.1\r\n\r\n");
        let out = text(&drain(&mut s));
        assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
        assert!(out.contains("Connection: close\r\n") && !out.contains("hello"));
        assert!(s.is_done() && !s.wants_read());
    }
    let mut s = Session::default();
    s.received(&vec![b'a'; HEAD_LIMIT + 1]);
    assert!(text(&drain(&mut s)).starts_with("HTTP/1.1 431 "));
    assert!(s.is_done());
}

#[test]
fn expect_continue_gets_an_interim_response() {
    let mut s = Session::default();
    s.received(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    let out = text(&drain(&mut s));
    assert!(out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
    s.received(b"hi");
    assert_eq!(text(&drain(&mut s)), "hi");
}

#[test]
fn peer_close_ends_the_session() {
    // Mid-head: no response, done.
    let mut s = Session::default();
    s.received(b"GET / HT");
    s.peer_closed();
    assert!(s.is_done() && !s.wants_write());
    // After a complete request (half-close): the response is still sent.
    let mut s = Session::default();
    s.received(b"GET / HTTP/1.1\r\n\r\n");
    s.peer_closed();
    assert!(!s.is_done());
    assert_eq!(text(&drain(&mut s)), HELLO);
    assert!(s.is_done());
    // Mid-body: what was echoed is sent, then done.
    let mut s = Session::default();
    s.received(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    s.peer_closed();
    assert!(text(&drain(&mut s)).ends_with("\r\n\r\nabc"));
    assert!(s.is_done());
    // Mid-/bytes: the response completes.
    let mut s = Session::default();
    s.received(b"GET /bytes/1000000 HTTP/1.1\r\n\r\n");
    s.peer_closed();
    assert!(drain_by(&mut s, 4096).len() > 1_000_000);
    assert!(s.is_done());
}

#[test]
fn pipelined_input_is_bounded_while_output_waits() {
    let mut s = Session::default();
    let request = b"GET /bytes/2000 HTTP/1.1\r\n\r\n";
    while s.wants_read() {
        s.received(request);
        check_invariant(&s);
    }
    assert!(s.wants_write());
    // Draining the output lets the queued requests through, until all are answered.
    let out = drain_by(&mut s, 65536);
    let responses = out.windows(8).filter(|w| w == b"HTTP/1.1").count();
    assert!(responses > INPUT_LIMIT / request.len());
    assert!(s.wants_read() && !s.wants_write());
}

/// Random bytes and mutated requests, in random pieces: no panic, never stalls.
#[test]
fn hostile_input_never_panics_or_stalls() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let samples: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /sum HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nxyz",
        b"GET /bytes/5000 HTTP/1.1\r\n\r\n",
        b"GET /exit/3 HTTP/1.1\r\n\r\n",
        b"\r\n\r\n:::\x00\xff GET /  HTTP/1.1\n\n",
    ];
    for _ in 0..3000 {
        let mut s = Session::default();
        let mut input = Vec::new();
        for _ in 0..1 + rand(4) {
            input.extend_from_slice(samples[rand(samples.len() as u64) as usize]);
        }
        for _ in 0..rand(4) {
            let at = rand(input.len() as u64) as usize;
            input[at] = rand(256) as u8;
        }
        let mut at = 0;
        while at < input.len() && s.wants_read() {
            let n = (1 + rand(20) as usize).min(input.len() - at);
            s.received(&input[at..at + n]);
            at += n;
            check_invariant(&s);
            if rand(2) == 0 {
                drain_by(&mut s, 1 + rand(3000) as usize);
            }
        }
        if rand(2) == 0 {
            s.peer_closed();
        }
        check_invariant(&s);
        drain_by(&mut s, 1 + rand(3000) as usize);
        check_invariant(&s);
    }
}
