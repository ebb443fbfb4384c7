//! The HTTP/2 server inside the session tunnel: the daemon is its only client and calls our
//! gRPC services (FileSync, FileSend, Auth, …) on it.
//!
//! Served with the `h2` crate directly rather than through tonic's transport (hyper), because
//! hyper does not expose h2's small-DATA-frame budget, and its default closes the connection
//! on traffic the daemon legitimately sends. h2 (since 0.4.16) charges every received DATA
//! frame smaller than 256 bytes `256 − payload` bytes against a per-connection budget — by
//! default half the connection window — and refunds the charge only when the application reads
//! the frame; when the budget runs out it sends `GOAWAY ENHANCE_YOUR_CALM`
//! (`too_many_data_frames`). BuildKit's fsutil sends one gRPC message per DATA frame: for a
//! local export one STAT (≈40–150 bytes) per entry, and per file a DATA chunk and a ~10-byte
//! empty DATA; for a context upload one ~10-byte REQ per requested file. Flow control bounds
//! the unread *bytes*, not the number of frames, so a receiver that falls a few thousand
//! messages behind (a slow disk, a busy machine) lost the session somewhere past ~10,000 files.
//!
//! Here the budget is sized so it cannot run out while the peer respects flow control: every
//! unread frame holds at least one byte of the connection window, so at most
//! [`CONNECTION_WINDOW`] frames are ever unread, each charged less than 256 bytes. What h2
//! buffers stays bounded by the windows, as in the daemon's own grpc-go, which has no such
//! budget. h2 separately allows only 100 non-final *empty* DATA frames per connection (not
//! configurable); grpc-go never sends one (its only empty DATA frame ends a stream).
//!
//! Owns the connection settings and the mapping of HTTP/2 streams to the tonic [`Routes`];
//! knows nothing about the services themselves.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::service::Routes;
use tower::ServiceExt;

/// Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE): modest, so one large transfer
/// cannot starve the daemon's health checks on the same connection.
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;
/// Connection receive window: the most unread bytes all streams may hold together.
pub(crate) const CONNECTION_WINDOW: u32 = 8 << 20;
/// h2's charge for the smallest possible (1-byte) DATA frame is below this, per frame.
const MAX_CHARGE_PER_FRAME: usize = 256;
/// The small-DATA-frame budget: the most h2 can ever charge while the peer stays within
/// [`CONNECTION_WINDOW`] (see the module documentation), so it is never exhausted.
pub(crate) const DATA_FRAME_BUDGET: usize = CONNECTION_WINDOW as usize * MAX_CHARGE_PER_FRAME;
/// Largest header block accepted: grpc-go's server default (which buildx's session server
/// uses), since DiffCopy metadata carries every `followpaths` / pattern of a build.
const MAX_HEADER_LIST: u32 = 16 << 20;
/// Streams the daemon may open at once (hyper's default; the daemon queues beyond it).
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Serves `routes` on one HTTP/2 connection over `io` until the peer closes it. Each request
/// runs in its own task. Returns the connection error, if it ended with one.
pub(crate) async fn serve<I>(io: I, routes: Routes) -> Result<(), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .data_frame_budget(DATA_FRAME_BUDGET)
        .handshake::<_, Bytes>(io)
        .await?;
    // `accept` also drives the connection (reads, writes, flow control) for every stream.
    while let Some(next) = conn.accept().await {
        let (req, respond) = next?;
        tokio::spawn(serve_stream(routes.clone(), req, respond));
    }
    Ok(())
}

/// One request: the routed service's response head, then its body (data and trailers).
async fn serve_stream(
    routes: Routes,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let req = req.map(|recv| RecvBody { recv, done: false });
    // A call the daemon gives up on (its deadline passed, the build was cancelled) resets the
    // stream: stop working on it.
    let resp = tokio::select! {
        resp = routes.oneshot(req) => match resp {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (parts, body) = resp.into_parts();
    let head = http::Response::from_parts(parts, ());
    // A body that is already over (a trailers-only gRPC error) goes out as one HEADERS frame
    // with END_STREAM, which is what gRPC clients expect.
    let end = body.is_end_stream();
    let Ok(send) = respond.send_response(head, end) else {
        return;
    };
    if !end {
        pipe_body(body, send).await;
    }
}

/// Copies a response body to its stream, waiting for send capacity so at most one chunk per
/// stream is buffered, and stops when the peer resets the stream.
async fn pipe_body(mut body: tonic::body::Body, mut send: h2::SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if !data.is_empty() && !wait_capacity(&mut send).await {
                    return;
                }
                if send.send_data(data, end).is_err() || end {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            send.reserve_capacity(0);
            let _ = send.send_trailers(trailers);
            return;
        }
    }
}

/// Waits until the stream may send at least one byte; false when it can no longer send.
async fn wait_capacity(send: &mut h2::SendStream<Bytes>) -> bool {
    // Claim one byte only: h2 raises the claim to what `send_data` buffers, and a large claim
    // made while waiting would pin connection window other streams need.
    send.reserve_capacity(1);
    std::future::poll_fn(|cx| {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(false);
        }
        while send.capacity() == 0 {
            match send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
            }
        }
        Poll::Ready(true)
    })
    .await
}

/// A request body read from an h2 stream. Each chunk's flow-control window is handed back as
/// soon as the service reads it, so the peer's sending is paced by our reading.
struct RecvBody {
    recv: h2::RecvStream,
    done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.recv.poll_data(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                // Fails only when the stream is already gone, which the next read reports.
                let _ = self.recv.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {}
        }
        let trailers = std::task::ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;

    #[test]
    fn budget_covers_a_full_window_of_one_byte_frames() {
        // h2 charges `256 - len` per unread frame of `len` bytes (0 < len < 256); the worst
        // case is the whole connection window in 1-byte frames.
        assert!(DATA_FRAME_BUDGET >= CONNECTION_WINDOW as usize * 255);
    }

    /// A service that reads nothing until released, then counts the DATA frames and bytes of
    /// its request and answers with them.
    #[derive(Clone, Default)]
    struct Stalled {
        release: Arc<tokio::sync::Notify>,
    }

    impl tonic::server::NamedService for Stalled {
        const NAME: &'static str = "test.Stalled";
    }

    type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

    impl tower::Service<http::Request<tonic::body::Body>> for Stalled {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let release = self.release.clone();
            Box::pin(async move {
                release.notified().await;
                let mut body = req.into_body();
                let (mut frames, mut bytes) = (0usize, 0usize);
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                        frames += 1;
                        bytes += data.len();
                    }
                }
                let text = format!("{frames} {bytes}");
                Ok(http::Response::new(tonic::body::Body::new(
                    http_body_util::Full::new(Bytes::from(text)),
                )))
            })
        }
    }

    /// The daemon's fsutil sends a gRPC message per DATA frame, many of them ~10 bytes. A
    /// receiver that falls behind must not lose the connection: h2's default budget (half
    /// the connection window) is spent after ~17,000 unread 10-byte frames and ends the
    /// connection with GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames".
    #[tokio::test]
    async fn a_reader_that_falls_behind_tiny_frames_keeps_the_connection() {
        const FRAMES: usize = 60_000;
        const SIZE: usize = 10;
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let stalled = Stalled::default();
        let server = tokio::spawn(serve(server_io, Routes::new(stalled.clone())));
        let (mut client, mut conn) = h2::client::handshake(client_io).await.unwrap();
        let mut ping = conn.ping_pong().unwrap();
        let conn = tokio::spawn(conn);

        let req = http::Request::post("http://session/test.Stalled/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        for _ in 0..FRAMES {
            // 600 kB in all, within the stream window: nothing waits for the reader.
            send.reserve_capacity(SIZE);
            while send.capacity() < SIZE {
                std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
            }
            send.send_data(Bytes::from_static(&[7; SIZE]), false)
                .unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
        // The server answers a PING only after every frame sent before it: all are unread.
        ping.ping(h2::Ping::opaque())
            .await
            .expect("the connection survived");

        stalled.release.notify_one();
        let resp = resp.await.expect("the response arrived");
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        assert_eq!(
            String::from_utf8(text).unwrap(),
            format!("{FRAMES} {}", FRAMES * SIZE)
        );
        drop(client);
        conn.abort();
        server.abort();
    }
}
