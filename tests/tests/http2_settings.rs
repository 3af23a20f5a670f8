//! `--max-concurrent-streams`, `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`
//! reach the client port's HTTP/2 server: a raw HTTP/2 client reads the server's SETTINGS
//! (etcd's default limit is 2^32-1 streams), sees the keepalive PING after the interval,
//! and, never answering it, sees the server close the connection after the timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use detcd_tests::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One HTTP/2 frame: (type, flags, payload). `None` when the server closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], payload))
}

/// Opens an HTTP/2 connection (prior knowledge) and returns it with the server's first
/// SETTINGS payload.
fn connect(addr: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).unwrap();
    loop {
        let (typ, flags, payload) = read_frame(&mut s).expect("the server's SETTINGS");
        if typ == SETTINGS && flags & 0x1 == 0 {
            // Acknowledge, as a client must.
            s.write_all(&[0, 0, 0, SETTINGS, 0x1, 0, 0, 0, 0]).unwrap();
            return (s, payload);
        }
    }
}

fn setting(payload: &[u8], id: u16) -> Option<u32> {
    payload.chunks(6).find_map(|c| {
        (u16::from_be_bytes([c[0], c[1]]) == id)
            .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    })
}

#[test]
fn http2_limits_and_keepalive_reach_the_client_port() {
    let s = subnet::HTTP2_SETTINGS;
    let mut c = Cluster::empty("http2-settings", s);
    for (i, extra) in [
        &[][..],
        &[
            "--max-concurrent-streams",
            "3",
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "1s",
        ][..],
    ]
    .iter()
    .enumerate()
    {
        let mut args = guide_args(c.dir(), s, i, 1, "http2");
        let name = format!("m{i}");
        set_flag(&mut args, "--name", &name);
        set_flag(
            &mut args,
            "--initial-cluster",
            &format!("{name}=http://{}:{PEER_PORT}", ip(s, i)),
        );
        args.extend(extra.iter().map(|a| a.to_string()));
        let m = c.add(&name, ip(s, i), args, vec![]);
        c.members[m].start();
    }
    c.wait_healthy(HEALTHY_TIMEOUT);

    let (_plain, settings) = connect(&c.members[0].client_addr());
    assert_eq!(
        setting(&settings, MAX_CONCURRENT_STREAMS),
        Some(u32::MAX),
        "etcd's default --max-concurrent-streams"
    );

    let (mut conn, settings) = connect(&c.members[1].client_addr());
    assert_eq!(setting(&settings, MAX_CONCURRENT_STREAMS), Some(3));
    // The keepalive PING comes after about a second of silence; left unanswered, the server
    // gives the connection up about a second later.
    let start = Instant::now();
    let mut pinged = None;
    loop {
        match read_frame(&mut conn) {
            Some((PING, flags, _)) if flags & 0x1 == 0 => {
                pinged.get_or_insert(start.elapsed());
            }
            Some((GOAWAY, ..)) | None => break,
            Some(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server neither pinged nor closed an idle connection"
        );
    }
    let pinged = pinged.expect("a keepalive PING before the connection closed");
    assert!(
        pinged >= Duration::from_millis(900),
        "PING after {pinged:?}, before the 1 s interval"
    );
}
