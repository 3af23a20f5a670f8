//! The member's listening sockets: TCP for `http://` and `https://` URLs, unix sockets for
//! etcd's `unix://` and `unixs://` (etcd 3.4 `pkg/transport/unix_listener.go`: the socket file
//! is the URL's `host:port`, removed first if it exists and again when the listener closes).
//! TLS, when the URL asks for it, runs over either kind of [`Conn`].

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// The socket file, removed when the listener is dropped.
        path: PathBuf,
    },
}

impl Listener {
    /// Binds a TCP socket.
    pub async fn tcp(addr: std::net::SocketAddr) -> io::Result<Listener> {
        TcpListener::bind(addr).await.map(Listener::Tcp)
    }

    /// Binds the unix socket file `path` (relative to the working directory), removing a
    /// file left at that path first, as etcd's `NewUnixListener` does.
    pub fn unix(path: &str) -> io::Result<Listener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        Ok(Listener::Unix {
            listener,
            path: PathBuf::from(path),
        })
    }

    /// Waits for the next connection. Returns it and the remote address for logs (`unix` for
    /// a unix socket, whose peers have no address).
    pub async fn accept(&self) -> io::Result<(Conn, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), peer.to_string()))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Conn::Unix(s), "unix".to_string()))
            }
        }
    }

    /// The bound address as logs show it: `ip:port`, or the socket file's path.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix { path, .. } => path.display().to_string(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One accepted (or dialed) connection, TCP or unix.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// The remote IP address of a TCP connection (`None` for a unix socket).
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Conn::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            Conn::Unix(_) => None,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl crate::tls::RemoteAddr for Rewound {
    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.remote_addr()
    }
}

/// A connection whose first byte has been read (to tell TLS from plaintext on a port that
/// serves both) and is handed out again by the first read.
pub struct Rewound {
    first: Option<u8>,
    inner: Conn,
}

impl Rewound {
    /// Reads the connection's first byte. Errors: the read's, or `UnexpectedEof` when the
    /// peer closes before sending anything.
    pub async fn read_first(mut inner: Conn) -> io::Result<Rewound> {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        if inner.read(&mut b).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Rewound {
            first: Some(b[0]),
            inner,
        })
    }

    /// The first byte, until it has been read again.
    pub fn first(&self) -> Option<u8> {
        self.first
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0 {
            if let Some(b) = this.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
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

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A unix listener replaces a stale socket file, carries bytes both ways, and removes its
    /// file when dropped.
    #[tokio::test]
    async fn unix_listener_replaces_a_stale_file_and_removes_its_own() {
        let dir = std::env::temp_dir().join(format!("detcd-listener-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("etcd.unix:1");
        std::fs::write(&path, b"stale").unwrap();
        let l = Listener::unix(path.to_str().unwrap()).unwrap();
        assert_eq!(l.local_addr(), path.display().to_string());
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (mut conn, peer) = l.accept().await.unwrap();
        assert_eq!(peer, "unix");
        assert!(conn.remote_ip().is_none());
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(l);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The first byte read to sniff the scheme is read again, then the rest follows.
    #[tokio::test]
    async fn a_rewound_connection_hands_out_its_first_byte_again() {
        let l = Listener::tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr: std::net::SocketAddr = l.local_addr().parse().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"\x16hello").await.unwrap();
        let (conn, _) = l.accept().await.unwrap();
        let mut r = Rewound::read_first(conn).await.unwrap();
        assert_eq!(r.first(), Some(0x16));
        let mut buf = [0u8; 6];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"\x16hello");
        r.write_all(b"ok").await.unwrap();
        let mut back = [0u8; 2];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ok");
        drop(client);
        let (conn, _) = {
            let _c = TcpStream::connect(addr).await.unwrap();
            l.accept().await.unwrap()
        };
        assert_eq!(
            Rewound::read_first(conn).await.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }

    #[tokio::test]
    async fn tcp_connections_report_their_remote_ip() {
        let l = Listener::tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr: std::net::SocketAddr = l.local_addr().parse().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (conn, peer) = l.accept().await.unwrap();
        assert!(peer.starts_with("127.0.0.1:"));
        assert_eq!(conn.remote_ip(), Some("127.0.0.1".parse().unwrap()));
    }
}
