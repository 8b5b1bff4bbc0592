//! The client against a small local h2 server (cleartext, and TLS with a client
//! certificate) that answers, resets, drops or stays silent as told.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ::h2::RecvStream;
use ::h2::server::SendResponse;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use super::*;

/// What the test server does with the one request it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// 200 with the request body back, `x-chunks: N` and a trailer.
    Echo,
    /// 401 as soon as the request headers arrive, before reading the body.
    AnswerAtOnce,
    /// Headers and part of a body, then RST_STREAM(INTERNAL_ERROR).
    ResetMidBody,
    /// Headers and part of a body, then the TCP connection closes.
    DropMidBody,
    /// Never answers.
    Silent,
}

/// What the server received.
#[derive(Debug, Default)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    chunks: Vec<Vec<u8>>,
    trailers: Option<Vec<(String, String)>>,
    client_certificate: bool,
}

const PARTIAL: &[u8] = b"{\"national_id\":";

struct Server {
    addr: SocketAddr,
    seen: mpsc::Receiver<Seen>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection on 127.0.0.1, in a thread of its own.
fn serve(behaviour: Behaviour, tls: Option<Arc<ServerConfig>>) -> Server {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let (tx, seen) = mpsc::channel();
    let thread = thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
            let Ok(Ok((tcp, _))) = accepted else { return };
            match tls {
                None => connection(tcp, behaviour, tx, false).await,
                Some(config) => {
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                        return;
                    };
                    let certificate = tls.get_ref().1.peer_certificates().is_some();
                    connection(tls, behaviour, tx, certificate).await;
                }
            }
        });
    });
    Server {
        addr,
        seen,
        thread: Some(thread),
    }
}

async fn connection<T>(io: T, behaviour: Behaviour, tx: mpsc::Sender<Seen>, certificate: bool)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = ::h2::server::handshake(io).await else {
        return;
    };
    let Some(Ok((request, respond))) = conn.accept().await else {
        return;
    };
    let (parts, body) = request.into_parts();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: pairs(&parts.headers),
        client_certificate: certificate,
        ..Seen::default()
    };
    tokio::spawn(stream(body, respond, seen, behaviour, tx));
    // The connection is driven until the client closes it, or for a moment only
    // when it is to be dropped mid-body.
    let limit = if behaviour == Behaviour::DropMidBody {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(10)
    };
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(_)) = conn.accept().await {}
    })
    .await;
}

async fn stream(
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    mut seen: Seen,
    behaviour: Behaviour,
    tx: mpsc::Sender<Seen>,
) -> std::result::Result<(), ::h2::Error> {
    let response = |status: u16| http::Response::builder().status(status).body(()).unwrap();
    match behaviour {
        Behaviour::AnswerAtOnce => {
            let mut out = respond.send_response(response(401), false)?;
            out.send_data(Bytes::from_static(b"refused"), true)?;
        }
        Behaviour::Silent => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            return Ok(());
        }
        _ => {}
    }
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        seen.chunks.push(data.to_vec());
    }
    seen.trailers = body.trailers().await?.map(|t| pairs(&t));
    let echo = seen.chunks.concat();
    let chunks = seen.chunks.len().to_string();
    let _ = tx.send(seen);
    match behaviour {
        Behaviour::Echo => {
            let mut head = response(200);
            head.headers_mut()
                .insert("x-chunks", HeaderValue::from_str(&chunks).unwrap());
            let mut out = respond.send_response(head, false)?;
            out.send_data(Bytes::from(echo), false)?;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-done", HeaderValue::from_static("yes"));
            out.send_trailers(trailers)?;
        }
        Behaviour::ResetMidBody => {
            let mut out = respond.send_response(response(200), false)?;
            out.send_data(Bytes::from_static(PARTIAL), false)?;
            // A reset drops what is still queued: let the connection write it first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            out.send_reset(::h2::Reason::INTERNAL_ERROR);
        }
        Behaviour::DropMidBody => {
            let mut out = respond.send_response(response(200), false)?;
            out.send_data(Bytes::from_static(PARTIAL), false)?;
            // Held until the connection is gone.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        Behaviour::AnswerAtOnce | Behaviour::Silent => {}
    }
    Ok(())
}

fn posted() -> H2Request {
    H2Request::new("POST", "/echo?x=1")
        .header("content-type", "application/json")
        .header("x-two", "a")
        .header("x-two", "b")
        .chunks(["{\"a\":", "1,", "\"b\":2}"])
        .trailers(&[("x-checksum", "abc")])
        .gap(Duration::from_millis(10))
}

#[test]
fn sends_chunks_and_trailers_and_receives_a_whole_response_over_h2c() {
    let server = serve(Behaviour::Echo, None);
    let r = H2Client::cleartext(server.addr).send(&posted()).unwrap();
    let seen = server.seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/echo")
    );
    assert_eq!(
        seen.chunks,
        vec![b"{\"a\":".to_vec(), b"1,".to_vec(), b"\"b\":2}".to_vec()]
    );
    assert_eq!(
        seen.trailers,
        Some(vec![("x-checksum".to_owned(), "abc".to_owned())])
    );
    let twos: Vec<_> = seen.headers.iter().filter(|(n, _)| n == "x-two").collect();
    assert_eq!(twos.len(), 2, "{:?}", seen.headers);
    assert!(!seen.client_certificate);

    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-chunks"), Some("3"));
    assert_eq!(r.body, b"{\"a\":1,\"b\":2}");
    assert_eq!(r.trailers, Some(vec![("x-done".into(), "yes".into())]));
    assert_eq!(r.to_http().header("x-chunks"), Some("3"));
}

#[test]
fn an_answer_before_the_request_is_all_sent_is_a_whole_response() {
    let server = serve(Behaviour::AnswerAtOnce, None);
    let request = posted().gap(Duration::from_millis(200));
    let r = H2Client::cleartext(server.addr).send(&request).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (401, b"refused".as_slice()));
}

#[test]
fn a_reset_mid_body_is_a_failure_with_what_came_before() {
    let server = serve(Behaviour::ResetMidBody, None);
    let err = H2Client::cleartext(server.addr)
        .send(&posted())
        .unwrap_err();
    assert_eq!(err.failure, Failure::Reset(2), "{err}");
    assert!(err.is_reset());
    assert_eq!(err.status, Some(200), "{err}");
    assert!(PARTIAL.starts_with(&err.body), "{err}");
}

#[test]
fn a_dropped_connection_mid_body_is_a_failure() {
    let server = serve(Behaviour::DropMidBody, None);
    let err = H2Client::cleartext(server.addr)
        .send(&posted())
        .unwrap_err();
    assert!(err.is_reset(), "{err}");
    assert!(PARTIAL.starts_with(&err.body), "{err}");
}

#[test]
fn silence_is_a_failure_once_the_time_is_up() {
    let server = serve(Behaviour::Silent, None);
    let limit = Duration::from_millis(300);
    let client = H2Client::cleartext(server.addr).with_timeout(limit);
    let err = client.send(&H2Request::new("GET", "/")).unwrap_err();
    assert_eq!(err.failure, Failure::TimedOut(limit), "{err}");
    assert!(!err.is_reset());
    assert_eq!(err.status, None);
}

#[test]
fn nothing_listening_is_a_connect_failure_for_every_request() {
    let addr = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let results = H2Client::cleartext(addr)
        .send_concurrently(&[H2Request::new("GET", "/a"), H2Request::new("GET", "/b")]);
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(
            matches!(
                r,
                Err(H2Failure {
                    failure: Failure::Connect(_),
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

/// A CA, a server certificate for `localhost` and a client certificate, PEM.
struct Certificates {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn certificates() -> Certificates {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Certificates {
        ca: ca.pem(),
        server: leaf(vec!["localhost".to_owned()]),
        client: leaf(vec!["client.example".to_owned()]),
    }
}

/// Requires a client certificate from the CA; offers only h2.
fn server_tls(certs: &Certificates) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.ca.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(certs.server.0.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(certs.server.1.as_bytes()).unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[test]
fn h2_over_tls_presents_the_client_certificate() {
    let certs = certificates();
    let server = serve(Behaviour::Echo, Some(server_tls(&certs)));
    let options = TlsOptions {
        ca_pem: &certs.ca,
        client: Some((&certs.client.0, &certs.client.1)),
        server_name: "localhost",
    };
    let client = H2Client::tls(server.addr, options).unwrap();
    let r = client.send(&posted()).unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"{\"a\":1,\"b\":2}".as_slice())
    );
    let seen = server.seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(seen.client_certificate);
    assert!(seen.trailers.is_some());
}

#[test]
fn h2_over_tls_without_the_required_certificate_gets_no_response() {
    let certs = certificates();
    let server = serve(Behaviour::Echo, Some(server_tls(&certs)));
    let options = TlsOptions {
        ca_pem: &certs.ca,
        client: None,
        server_name: "localhost",
    };
    let client = H2Client::tls(server.addr, options).unwrap();
    let err = client.send(&posted()).unwrap_err();
    assert_eq!(err.status, None, "{err}");
    assert!(server.seen.try_recv().is_err());
}
