//! The `tcp` sink: records as lines over a TCP connection, through a [`Spool`].
//!
//! The window loop only appends to the spool; the spool's delivery task connects to
//! `address` (`host:port`, resolved again at every connection), writes whole lines
//! (JSON, or text with `format = "text"`, then the header line first on every new
//! connection) and reconnects after a failure with capped exponential backoff.
//!
//! TCP has no application-level acknowledgement, so "delivered" means written to the
//! socket and flushed. Before each write the connection is checked for an
//! end-of-file from the receiver (it closed or restarted), so that lines are not
//! written into a connection the peer has already left. Lines whose write fails are
//! sent again on the next connection: at-least-once, deduplicate by `record-id`. A
//! receiver that dies with lines still unread in its socket buffer loses them (TCP
//! cannot tell the sender). Every write is whole lines; a connection that breaks in
//! the middle of one leaves the receiver a last line without its newline, which it
//! must discard.
//!
//! [`Spool`]: super::spool::Spool
use std::{future::Future, io, pin::Pin, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::spool::Deliver;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Delivery of spooled lines to a TCP receiver.
pub struct TcpDeliver {
    address: String,
    stream: Option<TcpStream>,
    /// The text format's header line, sent first on every connection.
    header: Option<Vec<u8>>,
}

impl TcpDeliver {
    pub fn new(address: &str, header: Option<Vec<u8>>) -> Self {
        TcpDeliver {
            address: address.to_string(),
            stream: None,
            header,
        }
    }

    async fn connect(&mut self) -> io::Result<&mut TcpStream> {
        if let Some(s) = &self.stream {
            if !peer_still_there(s) {
                self.stream = None;
            }
        }
        if self.stream.is_none() {
            let mut s = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(&self.address),
            )
            .await
            {
                Ok(r) => r?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            };
            s.set_nodelay(true)?;
            if let Some(h) = &self.header {
                s.write_all(h).await?;
            }
            tracing::info!(destination = %self.address, "connected");
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("connected above"))
    }
}

/// Whether the receiver still has the connection open: it sends nothing, so a
/// readable end-of-file (or an error) means it closed or reset it. Anything it does
/// send is discarded.
pub(crate) fn peer_still_there(s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

impl Deliver for TcpDeliver {
    fn send<'a>(
        &'a mut self,
        lines: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let result = async {
                let s = self.connect().await?;
                s.write_all(lines).await?;
                s.flush().await
            }
            .await;
            if result.is_err() {
                self.stream = None;
            }
            result
        })
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A receiver that closes each connection after its first read: the next send
    /// must notice the end-of-file and go to a new connection, header first, instead
    /// of writing into the closed one (where the lines would be lost).
    #[tokio::test]
    async fn a_closed_connection_is_noticed_before_writing_and_the_header_repeats() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                // Read until the header and one batch arrived, then hang up.
                while buf.iter().filter(|&&b| b == b'\n').count() < 2 {
                    let mut chunk = [0u8; 256];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    buf.extend_from_slice(&chunk[..n]);
                }
                got.push(String::from_utf8(buf).unwrap());
                drop(s);
            }
            got
        });
        let mut d = TcpDeliver::new(&addr, Some(b"a b\n".to_vec()));
        d.send(b"1 2\n").await.unwrap();
        // Let the receiver's close reach us.
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.send(b"3 4\n").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the second batch never reached a second connection")
            .unwrap();
        assert_eq!(got, ["a b\n1 2\n", "a b\n3 4\n"]);
        assert_eq!(d.describe(), format!("tcp://{addr}"));

        // Nobody listening: an error, not a hang.
        drop(d);
        let mut d = TcpDeliver::new(&addr, None);
        assert!(d.send(b"5\n").await.is_err());
    }
}
