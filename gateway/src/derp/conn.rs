//! Framed I/O over any byte stream (TLS or plain TCP): read one frame at a time, write frames
//! in batches.

use std::pin::Pin;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::frame::{decode_header, Frame, FrameError, HEADER_LEN};

/// A relay connection's byte stream, whatever carries it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Pin<Box<dyn Stream>>;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or ended.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
}

/// Reads the next frame from `r`, using `buf` for its payload.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Frame, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let (kind, len) = decode_header(header)?;
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(Frame::decode(kind, buf)?)
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    w.write_all(&out).await?;
    w.flush().await
}

/// Bytes gathered into one write when several frames are queued.
const WRITE_BATCH: usize = 256 * 1024;

/// Spawns the task that writes the frames sent to `rx` to `w`, several per write when they
/// queue up, and a keep-alive after `keep_alive` of silence. It ends (closing `w`) when every
/// sender is gone or a write fails.
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut w: W,
    mut rx: mpsc::Receiver<Frame>,
    keep_alive: Option<Duration>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(WRITE_BATCH);
        loop {
            let first = match keep_alive {
                Some(idle) => match tokio::time::timeout(idle, rx.recv()).await {
                    Ok(f) => f,
                    Err(_) => Some(Frame::KeepAlive),
                },
                None => rx.recv().await,
            };
            let Some(first) = first else {
                let _ = w.shutdown().await;
                return;
            };
            out.clear();
            first.encode(&mut out);
            while out.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => f.encode(&mut out),
                    Err(_) => break,
                }
            }
            if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    })
}
