//! Accept a URL in HTTP/2's `:authority` the way etcd (Go's HTTP/2 server) does.
//!
//! etcdctl 3.4 dials `--endpoints=http://127.0.0.1:2379` through grpc-go's passthrough
//! resolver, so every request it sends carries `:authority: http://127.0.0.1:2379`. Go's
//! server takes that; the `h2` crate under hyper/tonic resets the stream ("malformed
//! authority") and has no switch to relax it. So the client port's accepted connections go
//! through [`AuthorityFix`], which sits between the socket and hyper and, on HTTP/2
//! connections only, rewrites such an authority to the part after `://` (and before any
//! `/`), which is what etcd ends up treating it as.
//!
//! How: the client->server byte stream is parsed into frames. HEADERS (+ CONTINUATION)
//! header blocks are HPACK-decoded with one decoder per connection (so it follows the
//! client's dynamic table, size updates included), the authority fixed, and the whole block
//! re-encoded with representations that never touch the dynamic table (static-table
//! indexes and literals without indexing). h2's decoder therefore sees an always-empty
//! dynamic table and needs no syncing with ours — which is also why every block on the
//! connection is re-encoded, not only the rewritten ones. Re-encoded blocks are cut into
//! frames of at most 16384 bytes (the smallest SETTINGS_MAX_FRAME_SIZE a server can have),
//! so the server side's settings need no tracking. Every other frame, and the whole
//! server->client direction, passes through untouched; so does a connection that does not
//! open with the HTTP/2 client preface (HTTP/1.1: /health, /version, /metrics).
//!
//! Anything malformed that h2 would answer with a connection error anyway (bad HPACK, a
//! frame interleaved into a header block, bad padding, a header block over
//! [`MAX_HEADER_BLOCK`]) ends the connection with a read error.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hpack::{Decoder, STATIC_TABLE};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest header block (encoded, summed over HEADERS + CONTINUATION), and largest decoded
/// header list (RFC 7541 sizes: name + value + 32 per field), accepted; past either the
/// connection is closed. Far above what hyper lets through anyway (16 KiB by default).
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Largest dynamic table size the client may switch to. h2 allows 4096 unless configured
/// otherwise; this only keeps our copy of the table bounded.
const MAX_DYNAMIC_TABLE: usize = 1 << 20;

/// Frame payload size we never exceed when emitting: SETTINGS_MAX_FRAME_SIZE's minimum.
const OUT_FRAME_MAX: usize = 16384;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a connection was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// A header block (or its decoded header list) larger than [`MAX_HEADER_BLOCK`].
    HeaderBlockTooLarge,
    /// A frame other than CONTINUATION (or one for another stream) inside a header block, or
    /// a new HEADERS before the previous block ended.
    InterleavedHeaderBlock,
    /// PADDED/PRIORITY fields that do not fit the HEADERS frame.
    BadHeadersFrame,
    /// The header block does not decode.
    Hpack(String),
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::HeaderBlockTooLarge => {
                write!(f, "http2: header block over {MAX_HEADER_BLOCK} bytes")
            }
            RewriteError::InterleavedHeaderBlock => {
                write!(f, "http2: header block interrupted by another frame")
            }
            RewriteError::BadHeadersFrame => write!(f, "http2: malformed HEADERS frame"),
            RewriteError::Hpack(e) => write!(f, "http2: hpack: {e}"),
        }
    }
}

impl std::error::Error for RewriteError {}

/// `:authority` as etcd takes it: a URL's scheme and any path dropped (`http://a:1/` ->
/// `a:1`). A socket path with no host before it (etcdctl sends `/dir/etcd.sock:1` for
/// `--endpoints unix:///dir/etcd.sock:1`; Go's server takes any authority) is cut to its
/// file name. `None` when there is nothing to change (or nothing would be left).
pub fn fix_authority(value: &[u8]) -> Option<&[u8]> {
    let rest = match value.windows(3).position(|w| w == b"://") {
        Some(at) => &value[at + 3..],
        None => value,
    };
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let host = &rest[..end];
    if !host.is_empty() {
        return (host.len() != value.len()).then_some(host);
    }
    let file = rest.rsplit(|&b| b == b'/').next().unwrap_or_default();
    (!file.is_empty()).then_some(file)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not yet known whether the connection opens with the preface.
    Sniff,
    /// HTTP/2: frames are parsed.
    Frames,
    /// Not HTTP/2 (or given up on): bytes are forwarded as they come.
    Passthrough,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client->server half of the rewriting, without I/O: bytes in, bytes out.
pub struct Rewriter {
    mode: Mode,
    /// Received bytes not yet handled (at most a partial frame plus one read).
    inbuf: Vec<u8>,
    /// Payload bytes of the current pass-through frame still to forward.
    passthrough_left: usize,
    block: Option<PendingBlock>,
    decoder: Decoder,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        let decoder = Decoder::new(MAX_DYNAMIC_TABLE);
        Rewriter {
            mode: Mode::Sniff,
            inbuf: Vec::new(),
            passthrough_left: 0,
            block: None,
            decoder,
        }
    }

    /// True once the connection is known not to be HTTP/2: bytes may then bypass `feed`.
    pub fn is_passthrough(&self) -> bool {
        self.mode == Mode::Passthrough
    }

    /// Takes bytes the client sent, appends to `out` what the server should see.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        match self.mode {
            Mode::Passthrough => {
                out.extend_from_slice(input);
                Ok(())
            }
            Mode::Sniff => {
                self.inbuf.extend_from_slice(input);
                let n = self.inbuf.len().min(PREFACE.len());
                if self.inbuf[..n] != PREFACE[..n] {
                    self.mode = Mode::Passthrough;
                    out.append(&mut self.inbuf);
                    self.inbuf = Vec::new();
                    return Ok(());
                }
                if n < PREFACE.len() {
                    return Ok(());
                }
                out.extend_from_slice(PREFACE);
                self.inbuf.drain(..PREFACE.len());
                self.mode = Mode::Frames;
                self.process_frames(out)
            }
            Mode::Frames => {
                self.inbuf.extend_from_slice(input);
                self.process_frames(out)
            }
        }
    }

    /// The client closed its side: what is left (a partial frame) goes to the server as is,
    /// so it sees the same truncated stream it would have seen without us.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.inbuf);
        self.mode = Mode::Passthrough;
    }

    fn process_frames(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut pos = 0;
        let res = loop {
            let avail = self.inbuf.len() - pos;
            if self.passthrough_left > 0 {
                let n = self.passthrough_left.min(avail);
                out.extend_from_slice(&self.inbuf[pos..pos + n]);
                pos += n;
                self.passthrough_left -= n;
                if self.passthrough_left > 0 {
                    break Ok(());
                }
                continue;
            }
            if avail < FRAME_HEADER_LEN {
                break Ok(());
            }
            let h = &self.inbuf[pos..pos + FRAME_HEADER_LEN];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (typ, flags) = (h[3], h[4]);
            let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let header_frame =
                typ == TYPE_HEADERS || (typ == TYPE_CONTINUATION && self.block.is_some());
            if !header_frame {
                if self.block.is_some() {
                    break Err(RewriteError::InterleavedHeaderBlock);
                }
                // Anything else (a stray CONTINUATION included: h2 rejects it) goes through.
                out.extend_from_slice(h);
                pos += FRAME_HEADER_LEN;
                self.passthrough_left = len;
                continue;
            }
            if len > MAX_HEADER_BLOCK {
                break Err(RewriteError::HeaderBlockTooLarge);
            }
            if avail < FRAME_HEADER_LEN + len {
                break Ok(());
            }
            let payload_at = pos + FRAME_HEADER_LEN;
            pos = payload_at + len;
            let payload = &self.inbuf[payload_at..pos];
            let step = if typ == TYPE_HEADERS {
                Self::start_block(&mut self.block, flags, stream_id, payload)
            } else {
                Self::continue_block(&mut self.block, stream_id, payload)
            };
            if let Err(e) = step {
                break Err(e);
            }
            if flags & FLAG_END_HEADERS != 0 {
                if let Some(block) = self.block.take() {
                    if let Err(e) = emit_block(&mut self.decoder, block, out) {
                        break Err(e);
                    }
                }
            }
        };
        self.inbuf.drain(..pos);
        if res.is_err() {
            self.mode = Mode::Passthrough;
            self.inbuf = Vec::new();
        }
        res
    }

    fn start_block(
        block: &mut Option<PendingBlock>,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> Result<(), RewriteError> {
        if block.is_some() {
            return Err(RewriteError::InterleavedHeaderBlock);
        }
        let mut p = payload;
        let mut pad = 0usize;
        if flags & FLAG_PADDED != 0 {
            let (&n, rest) = p.split_first().ok_or(RewriteError::BadHeadersFrame)?;
            pad = usize::from(n);
            p = rest;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            if p.len() < 5 {
                return Err(RewriteError::BadHeadersFrame);
            }
            let (prio, rest) = p.split_at(5);
            priority = Some(<[u8; 5]>::try_from(prio).expect("5 bytes"));
            p = rest;
        }
        if pad > p.len() {
            return Err(RewriteError::BadHeadersFrame);
        }
        *block = Some(PendingBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragment: p[..p.len() - pad].to_vec(),
        });
        Ok(())
    }

    fn continue_block(
        block: &mut Option<PendingBlock>,
        stream_id: u32,
        payload: &[u8],
    ) -> Result<(), RewriteError> {
        let b = block.as_mut().ok_or(RewriteError::InterleavedHeaderBlock)?;
        if b.stream_id != stream_id {
            return Err(RewriteError::InterleavedHeaderBlock);
        }
        if b.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        b.fragment.extend_from_slice(payload);
        Ok(())
    }
}

/// Decodes a complete header block, fixes `:authority`, re-encodes it statelessly and
/// writes it out as HEADERS (+ CONTINUATION) frames.
fn emit_block(
    decoder: &mut Decoder,
    block: PendingBlock,
    out: &mut Vec<u8>,
) -> Result<(), RewriteError> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut list_size = 0usize;
    decoder
        .decode(&block.fragment, |name, value| {
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size <= MAX_HEADER_BLOCK {
                fields.push((name.to_vec(), value.to_vec()));
            }
        })
        .map_err(|e| RewriteError::Hpack(e.to_string()))?;
    if list_size > MAX_HEADER_BLOCK {
        return Err(RewriteError::HeaderBlockTooLarge);
    }
    let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
    for (name, value) in &fields {
        let value = if name.as_slice() == b":authority" {
            fix_authority(value).unwrap_or(value)
        } else {
            value
        };
        encode_field(name, value, &mut encoded);
    }
    write_header_frames(
        block.stream_id,
        block.end_stream,
        block.priority,
        &encoded,
        out,
    );
    Ok(())
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, typ: u8, flags: u8, stream_id: u32) {
    debug_assert!(len <= OUT_FRAME_MAX);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, typ, flags]);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

fn write_header_frames(
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
    out: &mut Vec<u8>,
) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first = block.len().min(OUT_FRAME_MAX - prio_len);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame_header(out, prio_len + first, TYPE_HEADERS, flags, stream_id);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(OUT_FRAME_MAX);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, n, TYPE_CONTINUATION, flags, stream_id);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// HPACK integer with an `prefix_bits`-bit prefix, `first` holding the representation's
/// leading bits (RFC 7541 §5.1).
fn encode_int(mut value: usize, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A raw (non-Huffman) string literal (RFC 7541 §5.2).
fn encode_str(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// One header field, never added to the dynamic table: a static-table index when the whole
/// field is there, else a literal without indexing (name from the static table if it is
/// there).
pub fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut name_index = 0;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == name {
            if *v == value {
                encode_int(i + 1, 7, 0x80, out);
                return;
            }
            if name_index == 0 {
                name_index = i + 1;
            }
        }
    }
    encode_int(name_index, 4, 0x00, out);
    if name_index == 0 {
        encode_str(name, out);
    }
    encode_str(value, out);
}

/// A connection's byte stream with HTTP/2 `:authority` URLs fixed on the way in (see the
/// module docs). Writes go straight to the inner stream.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
    /// Read buffer for the inner stream while frames are parsed.
    scratch: Vec<u8>,
    eof: bool,
    failed: Option<RewriteError>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; OUT_FRAME_MAX],
            eof: false,
            failed: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_passthrough() {
                if !this.scratch.is_empty() {
                    this.scratch = Vec::new();
                    this.out = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
            } else if let Err(e) = this.rewriter.feed(got, &mut this.out) {
                tracing::debug!("closing client connection: {e}");
                // What was rewritten before the bad frame still goes to the server first.
                this.failed = Some(e);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What the `h2_rewriter` fuzz target checks (and `net/tests/fuzz_corpus.rs` replays): the first
/// byte picks a read size, the rest is fed in reads of that size. Nothing may panic; a stream
/// that does not open with the HTTP/2 preface comes out byte for byte; an HTTP/2 stream never
/// comes out larger than a bounded re-encoding of what went in.
pub fn fuzz_check(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    let mut failed = false;
    for piece in input.chunks(chunk) {
        if rw.feed(piece, &mut out).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        rw.finish(&mut out);
    }
    let is_h2 = input.len() >= PREFACE.len() && input[..PREFACE.len()] == PREFACE[..];
    let could_be_h2 = input.len() < PREFACE.len() && input == &PREFACE[..input.len()];
    if !is_h2 && !could_be_h2 {
        assert_eq!(
            out, input,
            "a non-HTTP/2 stream must pass through unchanged"
        );
    }
    // Re-encoding without the dynamic table can grow a header block, but only boundedly:
    // every header field is at most its literal encoding plus a few length bytes.
    assert!(
        out.len() <= 64 + input.len() * 40,
        "output {} bytes from {} bytes of input",
        out.len(),
        input.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(typ: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![
            (payload.len() >> 16) as u8,
            (payload.len() >> 8) as u8,
            payload.len() as u8,
            typ,
            flags,
        ];
        v.extend_from_slice(&stream_id.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A frame as the server's side sees it.
    #[derive(Debug)]
    struct Frame {
        typ: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(mut b: &[u8]) -> Vec<Frame> {
        let mut v = Vec::new();
        while !b.is_empty() {
            assert!(b.len() >= 9, "truncated frame header");
            let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
            assert!(len <= OUT_FRAME_MAX || b[3] != TYPE_HEADERS && b[3] != TYPE_CONTINUATION);
            let stream_id = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push(Frame {
                typ: b[3],
                flags: b[4],
                stream_id,
                payload: b[9..9 + len].to_vec(),
            });
            b = &b[9 + len..];
        }
        v
    }

    /// What the server's HPACK decoder (a fresh one, as h2's never sees a table entry from
    /// us) makes of the header blocks; also checks nothing of ours touches its table.
    fn server_view(frames: &[Frame]) -> Vec<(u32, Fields)> {
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut cur: Option<(u32, Vec<u8>)> = None;
        for f in frames {
            match f.typ {
                TYPE_HEADERS => {
                    assert!(cur.is_none());
                    let mut p = &f.payload[..];
                    assert_eq!(f.flags & FLAG_PADDED, 0, "we never pad");
                    if f.flags & FLAG_PRIORITY != 0 {
                        p = &p[5..];
                    }
                    cur = Some((f.stream_id, p.to_vec()));
                }
                TYPE_CONTINUATION => cur.as_mut().unwrap().1.extend_from_slice(&f.payload),
                _ => continue,
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                let (sid, block) = cur.take().unwrap();
                // No representation of ours may add to (or resize) the table.
                assert_no_indexing(&block);
                blocks.push((sid, dec.decode(&block).unwrap()));
            }
        }
        blocks
    }

    /// Walks an encoded block checking every representation is indexed-static or a literal
    /// without indexing.
    fn assert_no_indexing(mut b: &[u8]) {
        fn int(b: &[u8], prefix: u8) -> (usize, usize) {
            let max = (1usize << prefix) - 1;
            let mut v = usize::from(b[0]) & max;
            if v < max {
                return (v, 1);
            }
            let (mut m, mut i) = (0, 1);
            loop {
                v += usize::from(b[i] & 127) << m;
                m += 7;
                i += 1;
                if b[i - 1] & 128 == 0 {
                    return (v, i);
                }
            }
        }
        while !b.is_empty() {
            if b[0] & 0x80 != 0 {
                let (idx, n) = int(b, 7);
                assert!((1..=61).contains(&idx), "index {idx} is not static");
                b = &b[n..];
                continue;
            }
            assert_eq!(
                b[0] & 0xf0,
                0,
                "representation {:#x} is not literal-without-indexing",
                b[0]
            );
            let (idx, mut n) = int(b, 4);
            assert!(idx <= 61);
            let strings = if idx == 0 { 2 } else { 1 };
            for _ in 0..strings {
                assert_eq!(b[n] & 0x80, 0, "we never Huffman-encode");
                let (len, k) = int(&b[n..], 7);
                n += k + len;
            }
            b = &b[n..];
        }
    }

    fn run(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        rw.feed(input, &mut out)?;
        Ok(out)
    }

    /// Feeds `input` one byte at a time, to exercise every split point.
    fn run_bytewise(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        for b in input {
            rw.feed(std::slice::from_ref(b), &mut out)?;
        }
        Ok(out)
    }

    fn request(authority: &str) -> Fields {
        fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ])
    }

    /// A client encoder that adds every new field to the dynamic table (literal with
    /// incremental indexing) and refers to it by index after that, as grpc-go does for
    /// `:authority` and the rest. Only for blocks that keep the table under 4096 bytes.
    #[derive(Default)]
    struct ClientEncoder {
        /// Newest first: entry i is index 62 + i.
        table: Fields,
    }

    impl ClientEncoder {
        fn encode(&mut self, f: &Fields) -> Vec<u8> {
            let mut out = Vec::new();
            for (n, v) in f {
                if let Some(i) = self.table.iter().position(|(tn, tv)| tn == n && tv == v) {
                    encode_int(62 + i, 7, 0x80, &mut out);
                } else {
                    out.push(0x40);
                    encode_str(n, &mut out);
                    encode_str(v, &mut out);
                    self.table.insert(0, (n.clone(), v.clone()));
                }
            }
            assert!(
                self.table
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 32)
                    .sum::<usize>()
                    <= 4096
            );
            out
        }
    }

    fn client_encode(enc: &mut ClientEncoder, f: &Fields) -> Vec<u8> {
        enc.encode(f)
    }

    #[test]
    fn fix_authority_cases() {
        assert_eq!(
            fix_authority(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(fix_authority(b"https://a:1/"), Some(&b"a:1"[..]));
        assert_eq!(fix_authority(b"unix://x/y"), Some(&b"x"[..]));
        assert_eq!(fix_authority(b"127.0.0.1:2379"), None);
        assert_eq!(fix_authority(b"http://"), None);
        assert_eq!(
            fix_authority(b"/tmp/d/infra0.client:1"),
            Some(&b"infra0.client:1"[..])
        );
        assert_eq!(fix_authority(b"unix:///tmp/x:1"), Some(&b"x:1"[..]));
        assert_eq!(fix_authority(b"/"), None);
        assert_eq!(fix_authority(b""), None);
    }

    #[test]
    fn authority_url_rewritten_across_dynamic_table_use() {
        let mut enc = ClientEncoder::default();
        let b1 = client_encode(&mut enc, &request("http://a:1"));
        let b2 = client_encode(&mut enc, &request("http://a:1"));
        // The second block is all references to the table the first one filled.
        assert_eq!(b2.len(), request("").len());
        let b3 = client_encode(&mut enc, &request("b:2"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x05hello")); // DATA
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b2,
        ));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &b3));
        for out in [run(&input).unwrap(), run_bytewise(&input).unwrap()] {
            assert_eq!(&out[..24], PREFACE);
            let frames = parse_frames(&out[24..]);
            let types: Vec<u8> = frames.iter().map(|f| f.typ).collect();
            assert_eq!(types, [0x4, 0x1, 0x0, 0x1, 0x1]);
            assert_eq!(frames[2].payload, b"\0\0\0\0\x05hello");
            assert_eq!(frames[2].flags, FLAG_END_STREAM);
            assert_eq!(frames[3].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
            let blocks = server_view(&frames);
            assert_eq!(blocks[0], (1, request("a:1")));
            assert_eq!(blocks[1], (3, request("a:1")));
            assert_eq!(blocks[2], (5, request("b:2")));
        }
    }

    #[test]
    fn huffman_and_dynamic_table_from_rfc7541_examples() {
        // RFC 7541 C.4.1 and C.4.2: requests with Huffman coding, the second using the
        // dynamic table the first filled.
        let b1 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let b2 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        let out = run(&input).unwrap();
        let blocks = server_view(&parse_frames(&out[24..]));
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let mut want1 = fields(&base);
        want1.extend(fields(&[(":authority", "www.example.com")]));
        let mut want2 = want1.clone();
        want2.extend(fields(&[("cache-control", "no-cache")]));
        assert_eq!(blocks, vec![(1, want1), (3, want2)]);
    }

    #[test]
    fn dynamic_table_size_update_is_followed() {
        let mut enc = ClientEncoder::default();
        let b1 = client_encode(&mut enc, &fields(&[("x-a", "1"), ("x-b", "2")]));
        // Table size update to 0 (evicts everything), then back to 4096, then a literal with
        // incremental indexing (new name) and a reference to it at index 62.
        let mut b2 = vec![0x20, 0x3f, 0xe1, 0x1f];
        b2.extend([0x40, 3, b'x', b'-', b'c', 1, b'3', 0x80 | 62, 0x82]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        let out = run(&input).unwrap();
        let blocks = server_view(&parse_frames(&out[24..]));
        assert_eq!(
            blocks[1].1,
            fields(&[("x-c", "3"), ("x-c", "3"), (":method", "GET")])
        );
        // After the size update to 0 the old entries are gone: index 63 no longer exists.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x20, 0x80 | 62]));
        assert!(matches!(run(&input), Err(RewriteError::Hpack(_))));
    }

    #[test]
    fn padded_priority_and_continuation() {
        let mut enc = ClientEncoder::default();
        let b = client_encode(&mut enc, &request("http://127.0.0.1:2379"));
        let prio = [0x80, 0, 0, 0, 16]; // exclusive dependency on stream 0... weight 16
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&prio);
        payload.extend_from_slice(&b[..10]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            7,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 7, &b[10..20]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 7, &b[20..]));
        input.extend(frame(0x6, 0, 0, b"pingpong")); // PING
        for out in [run(&input).unwrap(), run_bytewise(&input).unwrap()] {
            let frames = parse_frames(&out[24..]);
            assert_eq!(frames.len(), 2);
            let h = &frames[0];
            assert_eq!(h.typ, TYPE_HEADERS);
            assert_eq!(h.flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
            assert_eq!(h.stream_id, 7);
            assert_eq!(h.payload[..5], prio);
            assert_eq!(frames[1].payload, b"pingpong");
            assert_eq!(server_view(&frames), vec![(7, request("127.0.0.1:2379"))]);
        }
    }

    #[test]
    fn large_block_is_split_into_continuations() {
        let big = "v".repeat(40_000);
        let mut f = request("http://a:1");
        f.push((b"x-big".to_vec(), big.clone().into_bytes()));
        let mut enc = loona_hpack::Encoder::new();
        let b = enc.encode(f.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        // Sent as one big frame (as if the server allowed large frames)...
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY,
            1,
            &[&[0, 0, 0, 3, 7][..], &b].concat(),
        ));
        let out = run(&input).unwrap();
        let frames = parse_frames(&out[24..]);
        // ...comes out as frames of at most 16384 bytes.
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].payload.len(), OUT_FRAME_MAX);
        assert_eq!(frames[0].flags, FLAG_PRIORITY);
        assert_eq!(frames[1].typ, TYPE_CONTINUATION);
        assert_eq!(frames[1].flags, 0);
        assert_eq!(frames[2].flags, FLAG_END_HEADERS);
        let mut want = request("a:1");
        want.push((b"x-big".to_vec(), big.into_bytes()));
        assert_eq!(server_view(&frames), vec![(1, want)]);
    }

    #[test]
    fn non_h2_passes_through_unchanged() {
        let req = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n";
        assert_eq!(run(req).unwrap(), req);
        assert_eq!(run_bytewise(req).unwrap(), req);
        // Starts like the preface but is not.
        let odd = b"PRI * HTTP/1.1\r\n\r\nxyz";
        assert_eq!(run_bytewise(odd).unwrap(), odd);
        // A short prefix of the preface then EOF: handed on as is.
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        rw.feed(b"PRI * HT", &mut out).unwrap();
        assert!(out.is_empty());
        rw.finish(&mut out);
        assert_eq!(out, b"PRI * HT");
    }

    #[test]
    fn protocol_errors_close() {
        let mut enc = ClientEncoder::default();
        let b = client_encode(&mut enc, &request("a:1"));
        let with = |frames: Vec<Vec<u8>>| {
            let mut input = PREFACE.to_vec();
            frames.into_iter().for_each(|f| input.extend(f));
            run(&input)
        };
        // DATA inside a header block.
        assert_eq!(
            with(vec![
                frame(TYPE_HEADERS, 0, 1, &b[..5]),
                frame(0, 0, 1, b"x")
            ]),
            Err(RewriteError::InterleavedHeaderBlock)
        );
        // CONTINUATION for another stream.
        assert_eq!(
            with(vec![
                frame(TYPE_HEADERS, 0, 1, &b[..5]),
                frame(TYPE_CONTINUATION, 4, 3, &b[5..])
            ]),
            Err(RewriteError::InterleavedHeaderBlock)
        );
        // Padding longer than the frame.
        assert_eq!(
            with(vec![frame(TYPE_HEADERS, FLAG_PADDED | 4, 1, &[9, 0x82])]),
            Err(RewriteError::BadHeadersFrame)
        );
        // Oversized header frame, refused from its header alone.
        let huge = [0x10, 0x00, 0x01, TYPE_HEADERS, 4, 0, 0, 0, 1];
        assert_eq!(
            with(vec![huge.to_vec()]),
            Err(RewriteError::HeaderBlockTooLarge)
        );
        // A block growing past the cap through CONTINUATIONs.
        let chunk = vec![0u8; 600_000];
        assert_eq!(
            with(vec![
                frame(TYPE_HEADERS, 0, 1, &chunk),
                frame(TYPE_CONTINUATION, 0, 1, &chunk)
            ]),
            Err(RewriteError::HeaderBlockTooLarge)
        );
        // A decoded list past the cap (one table entry referenced many times).
        let mut blk = vec![0x40, 3, b'x', b'-', b'a'];
        encode_int(3000, 7, 0, &mut blk);
        blk.extend(std::iter::repeat_n(b'a', 3000));
        blk.extend(std::iter::repeat_n(0x80 | 62, 400));
        assert_eq!(
            with(vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &blk)]),
            Err(RewriteError::HeaderBlockTooLarge)
        );
        // Garbage HPACK.
        assert!(matches!(
            with(vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])]),
            Err(RewriteError::Hpack(_))
        ));
    }

    #[test]
    fn encoder_matches_static_table_and_round_trips() {
        let mut dec = loona_hpack::Decoder::new();
        let mut all: Fields = STATIC_TABLE
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        all.extend(fields(&[
            (":path", "/x"),
            ("x-custom", "yes"),
            ("long", &"z".repeat(300)),
        ]));
        let mut block = Vec::new();
        for (n, v) in &all {
            encode_field(n, v, &mut block);
        }
        assert_no_indexing(&block);
        assert_eq!(dec.decode(&block).unwrap(), all);
        // Each static entry that has a value encodes as its one-byte index, which a
        // reference decoder resolves to the same field: our table matches RFC 7541's.
        for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
            let mut b = Vec::new();
            encode_field(n, v, &mut b);
            assert_eq!(b, [0x80 | (i as u8 + 1)]);
            assert_eq!(dec.decode(&b).unwrap(), vec![(n.to_vec(), v.to_vec())]);
        }
    }

    /// A reader handing out its chunks one per read (less when the read buffer is smaller).
    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.0.is_empty() {
                let n = self.0[0].len().min(buf.remaining());
                buf.put_slice(&self.0[0][..n]);
                self.0[0].drain(..n);
                if self.0[0].is_empty() {
                    self.0.remove(0);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn read_all(s: &mut AuthorityFix<Chunks>, bufsize: usize) -> io::Result<Vec<u8>> {
        futures::executor::block_on(async {
            let mut all = Vec::new();
            loop {
                let mut mem = vec![0u8; bufsize];
                let mut rb = ReadBuf::new(&mut mem);
                std::future::poll_fn(|cx| Pin::new(&mut *s).poll_read(cx, &mut rb)).await?;
                if rb.filled().is_empty() {
                    return Ok(all);
                }
                all.extend_from_slice(rb.filled());
            }
        })
    }

    #[test]
    fn adapter_reads_rewritten_stream() {
        let mut enc = ClientEncoder::default();
        let b = client_encode(&mut enc, &request("http://a:1"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b));
        input.extend(frame(0, 1, 1, b"data"));
        let chunks: Vec<Vec<u8>> = input.chunks(7).map(<[u8]>::to_vec).collect();
        let mut s = AuthorityFix::new(Chunks(chunks));
        let out = read_all(&mut s, 5).unwrap();
        assert_eq!(out, run(&input).unwrap());
        assert_eq!(
            server_view(&parse_frames(&out[24..])),
            vec![(1, request("a:1"))]
        );

        let http1 = b"GET /version HTTP/1.1\r\n\r\n".to_vec();
        let mut s = AuthorityFix::new(Chunks(vec![http1[..3].to_vec(), http1[3..].to_vec()]));
        assert_eq!(read_all(&mut s, 4).unwrap(), http1);

        // A bad frame: what came before it is delivered, then the read fails.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | 4, 1, &[9]));
        let mut s = AuthorityFix::new(Chunks(vec![input]));
        let mut got = Vec::new();
        let err = futures::executor::block_on(async {
            loop {
                let mut mem = [0u8; 64];
                let mut rb = ReadBuf::new(&mut mem);
                match std::future::poll_fn(|cx| Pin::new(&mut s).poll_read(cx, &mut rb)).await {
                    Ok(()) => got.extend_from_slice(rb.filled()),
                    Err(e) => return e,
                }
            }
        });
        assert_eq!(got, PREFACE);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
