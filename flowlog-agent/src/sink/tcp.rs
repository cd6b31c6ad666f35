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
fn peer_still_there(s: &TcpStream) -> bool {
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
