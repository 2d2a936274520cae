//! gRPC through the reverse proxy.
//!
//! An echo service (`test.Echo`) is written by hand with tonic's generic building blocks (no
//! protoc, no build-time codegen) and served over h2c. Every check runs against a client that
//! talks to a plain `ReverseProxy::new("/", "http://upstream")` router; `direct_sanity` runs the
//! same checks against the upstream itself to validate the harness.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, join_all};
use futures_util::stream::{self, BoxStream, StreamExt};
use http::HeaderValue;
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{
    ClientStreamingService, NamedService, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, IntoRequest, IntoStreamingRequest, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use tower::Service;

// ===== Constants =====

/// Request metadata the server copies into its response headers.
const TEST_META: &str = "x-test-meta";
/// Trailer the server appends to every response that has a trailer section.
const TRAILER_META: &str = "x-trailer-meta";
const TRAILER_VALUE: &str = "trailer-value-7";
/// Response header in which the server reports the `te` request header it received.
const SAW_TE: &str = "x-upstream-saw-te";

/// Message size limit for both ends, above tonic's 4 MiB default.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Size of the payload in the large-message check: bigger than tonic's default limit.
const LARGE_PAYLOAD: usize = 5 * 1024 * 1024;

/// Upper bound for any single network step, so a misbehaving proxy fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

// ===== Messages (hand-written prost) =====

/// Request for every method of `test.Echo`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    /// Text echoed back (concatenated by `ClientStream`).
    #[prost(string, tag = "1")]
    message: String,
    /// `ServerStream`: how many replies to send.
    #[prost(uint32, tag = "2")]
    count: u32,
    /// Opaque bytes echoed back by `Unary` and `Bidi`.
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    /// `Unary`: fail with this status instead of replying. `ServerStream`: fail with this
    /// status after sending `count` replies (so it travels in the trailers).
    #[prost(message, optional, tag = "4")]
    fail: Option<Failure>,
}

/// A `tonic::Status` described as data.
#[derive(Clone, PartialEq, prost::Message)]
struct Failure {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(bytes = "bytes", tag = "3")]
    details: Bytes,
}

impl Failure {
    fn to_status(&self) -> Status {
        Status::with_details(
            Code::from_i32(self.code),
            self.message.clone(),
            self.details.clone(),
        )
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    /// Position of this reply in its stream (or number of messages received, for
    /// `ClientStream`).
    #[prost(uint32, tag = "2")]
    index: u32,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

// ===== Server: method handlers =====

type ReplyStream = BoxStream<'static, Result<EchoReply, Status>>;

/// Wraps a reply, echoing the request's `x-test-meta` as response header metadata.
fn respond<T>(request_metadata: &MetadataMap, message: T) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(value) = request_metadata.get(TEST_META) {
        response.metadata_mut().insert(TEST_META, value.clone());
    }
    response
}

async fn unary(request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
    let (metadata, _, message) = request.into_parts();
    if let Some(failure) = &message.fail {
        return Err(failure.to_status());
    }
    let reply = EchoReply {
        message: message.message,
        index: 0,
        payload: message.payload,
    };
    Ok(respond(&metadata, reply))
}

async fn server_stream(request: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
    let (metadata, _, message) = request.into_parts();
    let EchoRequest {
        message: text,
        count,
        fail,
        ..
    } = message;
    let replies = (0..count).map(move |index| {
        Ok(EchoReply {
            message: format!("{text}#{index}"),
            index,
            payload: Vec::new(),
        })
    });
    let tail = fail.map(|failure| Err(failure.to_status()));
    let replies: ReplyStream = stream::iter(replies.chain(tail)).boxed();
    Ok(respond(&metadata, replies))
}

async fn client_stream(
    request: Request<Streaming<EchoRequest>>,
) -> Result<Response<EchoReply>, Status> {
    let metadata = request.metadata().clone();
    let mut inbound = request.into_inner();
    let mut joined = String::new();
    let mut received = 0;
    while let Some(message) = inbound.message().await? {
        joined.push_str(&message.message);
        received += 1;
    }
    let reply = EchoReply {
        message: joined,
        index: received,
        payload: Vec::new(),
    };
    Ok(respond(&metadata, reply))
}

async fn bidi(request: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
    let metadata = request.metadata().clone();
    let mut next_index = 0;
    // Each reply is produced as soon as its request arrives: nothing is collected first.
    let replies: ReplyStream = request
        .into_inner()
        .map(move |item| {
            let index = next_index;
            next_index += 1;
            item.map(|message| EchoReply {
                message: message.message,
                index,
                payload: message.payload,
            })
        })
        .boxed();
    Ok(respond(&metadata, replies))
}

// ===== Server: tonic method adapters =====

struct UnaryMethod;

impl UnaryService<EchoRequest> for UnaryMethod {
    type Response = EchoReply;
    type Future = BoxFuture<'static, Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(unary(request))
    }
}

struct ServerStreamMethod;

impl ServerStreamingService<EchoRequest> for ServerStreamMethod {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<'static, Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        Box::pin(server_stream(request))
    }
}

struct ClientStreamMethod;

impl ClientStreamingService<EchoRequest> for ClientStreamMethod {
    type Response = EchoReply;
    type Future = BoxFuture<'static, Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(client_stream(request))
    }
}

struct BidiMethod;

impl StreamingService<EchoRequest> for BidiMethod {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<'static, Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin(bidi(request))
    }
}

// ===== Server: HTTP service =====

/// The `test.Echo` service as a tower service over HTTP, routing on the request path.
///
/// Besides dispatching to the handlers it reports the `te` header it received (as the
/// `x-upstream-saw-te` response header) and appends `x-trailer-meta` to the response trailers.
#[derive(Clone)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let saw_te = request
                .headers()
                .get(http::header::TE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("<absent>"));
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE);
            let mut response = match request.uri().path() {
                "/test.Echo/Unary" => grpc.unary(UnaryMethod, request).await,
                "/test.Echo/ServerStream" => {
                    grpc.server_streaming(ServerStreamMethod, request).await
                }
                "/test.Echo/ClientStream" => {
                    grpc.client_streaming(ClientStreamMethod, request).await
                }
                "/test.Echo/Bidi" => grpc.streaming(BidiMethod, request).await,
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            };
            response.headers_mut().insert(SAW_TE, saw_te);
            Ok(response.map(append_trailer))
        })
    }
}

/// Adds `x-trailer-meta` to the trailer section of `body` (a trailers-only response has none).
fn append_trailer(body: Body) -> Body {
    Body::new(body.map_frame(|mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            trailers.insert(TRAILER_META, HeaderValue::from_static(TRAILER_VALUE));
        }
        frame
    }))
}

/// Serves `test.Echo` over h2c (HTTP/2 only, prior knowledge) on an ephemeral port.
async fn spawn_grpc_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream listener");
    let addr = listener.local_addr().expect("upstream local address");
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(async move {
        Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming)
            .await
            .expect("upstream gRPC server failed");
    });
    addr
}

// ===== Client =====

/// Hand-written client for `test.Echo`.
#[derive(Clone)]
struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    async fn connect(addr: SocketAddr) -> Self {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect to gRPC endpoint");
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Self { grpc }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))
    }

    async fn unary(
        &mut self,
        request: impl IntoRequest<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Unary");
        self.grpc
            .unary(request.into_request(), path, ProstCodec::default())
            .await
    }

    async fn server_stream(
        &mut self,
        request: impl IntoRequest<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/ServerStream");
        self.grpc
            .server_streaming(request.into_request(), path, ProstCodec::default())
            .await
    }

    async fn client_stream(
        &mut self,
        request: impl IntoStreamingRequest<Message = EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/ClientStream");
        self.grpc
            .client_streaming(
                request.into_streaming_request(),
                path,
                ProstCodec::default(),
            )
            .await
    }

    async fn bidi(
        &mut self,
        request: impl IntoStreamingRequest<Message = EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Bidi");
        self.grpc
            .streaming(
                request.into_streaming_request(),
                path,
                ProstCodec::default(),
            )
            .await
    }
}

// ===== Helpers =====

/// Runs the reverse proxy under test in front of `upstream`, on an ephemeral port.
async fn spawn_proxy(upstream: SocketAddr) -> SocketAddr {
    let proxy = axum_reverse_proxy::ReverseProxy::new("/", format!("http://{upstream}"));
    let app: axum::Router = proxy.into();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy listener");
    let addr = listener.local_addr().expect("proxy local address");
    tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("proxy server failed");
    });
    addr
}

/// Awaits `future`, panicking with `what` if it takes longer than [`STEP_TIMEOUT`].
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn text(message: impl Into<String>) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..EchoRequest::default()
    }
}

/// A status whose message needs percent-encoding and whose details are every byte value, so
/// that `grpc-message` and the base64 `grpc-status-details-bin` are both exercised.
fn sample_failure() -> Failure {
    Failure {
        code: Code::FailedPrecondition as i32,
        message: "précondition échouée: 100% \"sure\"\n(line two)".to_owned(),
        details: (0..=u8::MAX).collect::<Vec<u8>>().into(),
    }
}

fn assert_status_matches(status: &Status, expected: &Failure) {
    assert_eq!(status.code(), Code::from_i32(expected.code), "{status:?}");
    assert_eq!(status.message(), expected.message, "{status:?}");
    assert_eq!(status.details(), &expected.details[..], "{status:?}");
}

fn metadata_str<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata
        .get(key)
        .map(|value| value.to_str().expect("ASCII metadata"))
}

// ===== Checks (shared by the direct and proxied tests) =====

async fn check_unary(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let reply = within("unary call", client.unary(text("hello")))
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!(reply.message, "hello");

    // Many concurrent calls multiplexed over the same connection.
    let calls = (0..20).map(|i| {
        let mut client = client.clone();
        async move {
            let reply = client.unary(text(format!("call-{i}"))).await?;
            Ok::<_, Status>((i, reply.into_inner().message))
        }
    });
    for result in within("concurrent unary calls", join_all(calls)).await {
        let (i, message) = result.expect("concurrent unary call");
        assert_eq!(message, format!("call-{i}"));
    }
}

async fn check_server_streaming(addr: SocketAddr) {
    const COUNT: u32 = 100;
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let request = EchoRequest {
        count: COUNT,
        ..text("item")
    };
    let mut replies = within("server stream call", client.server_stream(request))
        .await
        .expect("server stream call")
        .into_inner();
    for expected in 0..COUNT {
        let reply = within("server stream reply", replies.message())
            .await
            .expect("server stream reply")
            .expect("stream ended early");
        assert_eq!(reply.index, expected);
        assert_eq!(reply.message, format!("item#{expected}"));
    }
    let end = within("server stream end", replies.message())
        .await
        .expect("server stream ends with OK status");
    assert!(end.is_none(), "unexpected extra reply: {end:?}");
}

async fn check_client_streaming(addr: SocketAddr) {
    const COUNT: u32 = 20;
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let parts: Vec<String> = (0..COUNT).map(|i| format!("<{i}>")).collect();
    let requests = stream::iter(parts.clone().into_iter().map(text));
    let reply = within("client stream call", client.client_stream(requests))
        .await
        .expect("client stream call")
        .into_inner();
    assert_eq!(reply.index, COUNT);
    assert_eq!(reply.message, parts.concat());
}

async fn check_bidi(addr: SocketAddr) {
    const ROUNDS: u32 = 50;
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let (sender, receiver) = mpsc::channel(1);
    // Queue the first message before the call so nothing depends on when headers flow.
    sender.send(text("ping-0")).await.expect("queue first");
    let mut replies = within("bidi call", client.bidi(ReceiverStream::new(receiver)))
        .await
        .expect("bidi call")
        .into_inner();
    for round in 0..ROUNDS {
        if round > 0 {
            sender
                .send(text(format!("ping-{round}")))
                .await
                .expect("send next message");
        }
        // Only one message is in flight: a proxy that buffers either direction stalls here.
        let reply = within("bidi reply (buffering proxy?)", replies.message())
            .await
            .expect("bidi reply")
            .expect("bidi stream ended early");
        assert_eq!(reply.index, round);
        assert_eq!(reply.message, format!("ping-{round}"));
    }
    drop(sender);
    let end = within("bidi end", replies.message())
        .await
        .expect("bidi ends with OK status");
    assert!(end.is_none(), "unexpected extra reply: {end:?}");
}

/// A failing unary call: the status comes back as a trailers-only response (in the headers).
async fn check_error_status(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let failure = sample_failure();
    let request = EchoRequest {
        fail: Some(failure.clone()),
        ..text("please fail")
    };
    let status = within("failing unary call", client.unary(request))
        .await
        .expect_err("call must fail");
    assert_status_matches(&status, &failure);
}

/// A server stream that fails after some replies: the status comes back in real trailers.
async fn check_error_in_trailers(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let failure = sample_failure();
    let request = EchoRequest {
        count: 3,
        fail: Some(failure.clone()),
        ..text("then fail")
    };
    let mut replies = within("failing stream call", client.server_stream(request))
        .await
        .expect("headers arrive with success")
        .into_inner();
    for expected in 0..3 {
        let reply = within("reply before failure", replies.message())
            .await
            .expect("reply before failure")
            .expect("stream ended early");
        assert_eq!(reply.index, expected);
    }
    let status = within("trailing status", replies.message())
        .await
        .expect_err("stream must end with the failure");
    assert_status_matches(&status, &failure);
}

async fn check_metadata(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;

    // Unary: tonic merges headers and trailers into the response metadata.
    let mut request = text("with metadata").into_request();
    request
        .metadata_mut()
        .insert(TEST_META, MetadataValue::from_static("unary-meta-1"));
    let response = within("unary call", client.unary(request))
        .await
        .expect("unary call");
    assert_eq!(
        metadata_str(response.metadata(), TEST_META),
        Some("unary-meta-1")
    );
    assert_eq!(
        metadata_str(response.metadata(), TRAILER_META),
        Some(TRAILER_VALUE)
    );

    // Streaming: headers and trailers are observable separately.
    let mut request = EchoRequest {
        count: 2,
        ..text("with metadata")
    }
    .into_request();
    request
        .metadata_mut()
        .insert(TEST_META, MetadataValue::from_static("stream-meta-2"));
    let response = within("server stream call", client.server_stream(request))
        .await
        .expect("server stream call");
    let headers = response.metadata().clone();
    assert_eq!(metadata_str(&headers, TEST_META), Some("stream-meta-2"));
    assert_eq!(metadata_str(&headers, TRAILER_META), None);
    let mut replies = response.into_inner();
    let trailers = within("stream trailers", replies.trailers())
        .await
        .expect("stream ends with OK status")
        .expect("stream has trailers");
    assert_eq!(metadata_str(&trailers, TRAILER_META), Some(TRAILER_VALUE));
    assert_eq!(metadata_str(&trailers, TEST_META), None);
}

async fn check_large_message(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let payload: Vec<u8> = (0..LARGE_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let request = EchoRequest {
        payload: payload.clone(),
        ..text("large")
    };
    let reply = within("large unary call", client.unary(request))
        .await
        .expect("large unary call")
        .into_inner();
    assert_eq!(reply.payload.len(), payload.len());
    assert!(reply.payload == payload, "large payload corrupted");
}

/// gRPC requires `te: trailers` on requests; it must reach the upstream.
async fn check_te_trailers(addr: SocketAddr) {
    let mut client = within("connect", EchoClient::connect(addr)).await;
    let response = within("unary call", client.unary(text("te")))
        .await
        .expect("unary call");
    assert_eq!(metadata_str(response.metadata(), SAW_TE), Some("trailers"));
}

// ===== Direct (harness sanity) =====

#[tokio::test]
async fn direct_sanity() {
    let upstream = spawn_grpc_upstream().await;
    check_unary(upstream).await;
    check_server_streaming(upstream).await;
    check_client_streaming(upstream).await;
    check_bidi(upstream).await;
    check_error_status(upstream).await;
    check_error_in_trailers(upstream).await;
    check_metadata(upstream).await;
    check_large_message(upstream).await;
    check_te_trailers(upstream).await;
}

// ===== Through the proxy =====

#[tokio::test]
async fn unary_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_unary(proxy).await;
}

#[tokio::test]
async fn server_streaming_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_server_streaming(proxy).await;
}

#[tokio::test]
async fn client_streaming_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_client_streaming(proxy).await;
}

#[tokio::test]
async fn bidi_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_bidi(proxy).await;
}

#[tokio::test]
async fn error_status_with_details_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_error_status(proxy).await;
}

#[tokio::test]
async fn error_status_in_trailers_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_error_in_trailers(proxy).await;
}

#[tokio::test]
async fn metadata_both_ways() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_metadata(proxy).await;
}

#[tokio::test]
async fn large_message_through_proxy() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_large_message(proxy).await;
}

#[tokio::test]
async fn te_trailers_reaches_upstream() {
    let proxy = spawn_proxy(spawn_grpc_upstream().await).await;
    check_te_trailers(proxy).await;
}
