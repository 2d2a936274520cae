//! Dialling an upstream for our pool: TCP to the endpoint's address, then TLS under the
//! endpoint's name.
//!
//! A [`PoolKey`] says where to connect (its `authority`: an IP address, or a host name the
//! system resolves, and a port) and, for endpoints found by DNS discovery, which name the
//! upstream is known by (its `server_name`). TLS sends that name as SNI and verifies the
//! certificate against it; without one, the authority's host is used, as by any HTTP
//! client. hyper-rustls' and hyper-tls' connectors take both from the one URI they dial,
//! so they cannot connect to `10.0.0.7` while verifying `api.internal`: this module does
//! the TCP part with hyper-util's `HttpConnector` (nodelay, keep-alive, connect timeout,
//! happy eyeballs) and the TLS handshake itself.

use std::io;
use std::pin::Pin;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use http::uri::{Scheme, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::http_connector;
use super::pool::PoolKey;
use crate::error::BoxError;

/// Which application protocols to offer by ALPN on a TLS connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2` and `http/1.1`: the pool speaks whichever the upstream picks.
    Any,
    /// HTTP/1.1 only: an upgrade (WebSocket) needs it.
    Http1,
}

/// How the pool opens connections: TCP options and the TLS library and trust.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    tls: Tls,
    /// Unit tests: every connection is an in-memory pipe whose far end goes here.
    #[cfg(test)]
    pipes: Option<tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>>,
}

#[derive(Clone)]
enum Tls {
    /// Plain TCP only: a build without a TLS library, or the h2c pool.
    None,
    #[cfg(feature = "tls")]
    Rustls {
        any: Arc<rustls::ClientConfig>,
        http1: Arc<rustls::ClientConfig>,
    },
    #[cfg(feature = "native-tls")]
    Native {
        any: tokio_native_tls::TlsConnector,
        http1: tokio_native_tls::TlsConnector,
    },
}

impl Connector {
    /// The default: the system's TLS library with feature `native-tls`, else rustls with
    /// Mozilla's roots (feature `tls`), else plain TCP. Built once per process (parsing a
    /// root store is not free).
    pub(crate) fn standard() -> Connector {
        static STANDARD: OnceLock<Connector> = OnceLock::new();
        STANDARD.get_or_init(build_standard).clone()
    }

    /// Plain TCP only (`https` keys fail to connect).
    pub(crate) fn plain() -> Connector {
        Connector {
            tcp: http_connector(),
            tls: Tls::None,
            #[cfg(test)]
            pipes: None,
        }
    }

    /// Unit tests: connections are `tokio::io::duplex` pipes; their far ends arrive on
    /// `far_ends`, for the test to play the upstream.
    #[cfg(test)]
    pub(crate) fn pipes(
        far_ends: tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
    ) -> Connector {
        Connector {
            pipes: Some(far_ends),
            ..Connector::plain()
        }
    }

    /// rustls with `config` (its roots, client certificate, versions…). ALPN is the
    /// pool's to choose: the config's own `alpn_protocols` are replaced.
    #[cfg(feature = "tls")]
    pub(crate) fn rustls(config: rustls::ClientConfig) -> Connector {
        let mut any = config.clone();
        any.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http1 = config;
        // As hyper-rustls' `enable_http1()`: no ALPN at all, so a server that knows ALPN
        // but not `http/1.1` still answers in HTTP/1.1.
        http1.alpn_protocols = Vec::new();
        Connector {
            tcp: http_connector(),
            tls: Tls::Rustls {
                any: Arc::new(any),
                http1: Arc::new(http1),
            },
            #[cfg(test)]
            pipes: None,
        }
    }

    /// Open a connection to `key`: TCP to its authority, then, for `https`, TLS under its
    /// server name offering `alpn`. Returns the stream and whether ALPN chose HTTP/2.
    pub(crate) async fn connect(
        &self,
        key: &PoolKey,
        alpn: Alpn,
    ) -> Result<(TokioIo<Stream>, bool), BoxError> {
        #[cfg(test)]
        if let Some(far_ends) = &self.pipes {
            let (near, far) = tokio::io::duplex(64 * 1024);
            let _ = far_ends.send(far);
            return Ok((TokioIo::new(Stream::Pipe(near)), false));
        }
        // The scheme only gives `HttpConnector` the default port of an authority without
        // one; TLS is ours.
        let uri = Uri::builder()
            .scheme(if key.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()?;
        let tcp = self.tcp.clone().oneshot(uri).await?.into_inner();
        if !key.https {
            return Ok((TokioIo::new(Stream::Tcp(tcp)), false));
        }
        match &self.tls {
            Tls::None => {
                // No TLS to offer anything by.
                let _ = alpn;
                Err("https needs the `tls` or `native-tls` feature".into())
            }
            #[cfg(feature = "tls")]
            Tls::Rustls { any, http1 } => {
                let config = match alpn {
                    Alpn::Any => any,
                    Alpn::Http1 => http1,
                };
                let server_name = rustls::pki_types::ServerName::try_from(
                    key.tls_name().to_owned(),
                )
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the upstream's name is not a valid TLS server name",
                    )
                })?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(server_name, tcp)
                    .await?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok((TokioIo::new(Stream::Rustls(Box::new(tls))), h2))
            }
            #[cfg(feature = "native-tls")]
            Tls::Native { any, http1 } => {
                let connector = match alpn {
                    Alpn::Any => any,
                    Alpn::Http1 => http1,
                };
                let tls = connector.connect(key.tls_name(), tcp).await?;
                let h2 = matches!(
                    tls.get_ref().negotiated_alpn(),
                    Ok(Some(protocol)) if protocol == b"h2"
                );
                Ok((TokioIo::new(Stream::Native(Box::new(tls))), h2))
            }
        }
    }
}

#[cfg(feature = "native-tls")]
fn build_standard() -> Connector {
    let build = |alpn: &[&str]| {
        native_tls::TlsConnector::builder()
            .request_alpns(alpn)
            .build()
            .map(tokio_native_tls::TlsConnector::from)
            .expect("the system TLS library could not build a client connector")
    };
    Connector {
        tcp: http_connector(),
        tls: Tls::Native {
            any: build(&["h2", "http/1.1"]),
            http1: build(&["http/1.1"]),
        },
        #[cfg(test)]
        pipes: None,
    }
}

#[cfg(all(feature = "tls", not(feature = "native-tls")))]
fn build_standard() -> Connector {
    Connector::rustls(super::tls::default_rustls_config())
}

#[cfg(not(any(feature = "tls", feature = "native-tls")))]
fn build_standard() -> Connector {
    Connector::plain()
}

// ===== impl Stream =====

/// A connection from [`Connector::connect`]: plain TCP or one of the TLS streams.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Rustls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(feature = "native-tls")]
    Native(Box<tokio_native_tls::TlsStream<TcpStream>>),
    /// Unit tests: an in-memory pipe.
    #[cfg(test)]
    Pipe(tokio::io::DuplexStream),
}

/// Apply `$call` to whichever stream `$self` holds.
macro_rules! each {
    ($self:expr, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $call,
            #[cfg(feature = "tls")]
            Stream::Rustls($s) => $call,
            #[cfg(feature = "native-tls")]
            Stream::Native($s) => $call,
            #[cfg(test)]
            Stream::Pipe($s) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Rustls(s) => s.is_write_vectored(),
            #[cfg(feature = "native-tls")]
            Stream::Native(s) => s.is_write_vectored(),
            #[cfg(test)]
            Stream::Pipe(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
