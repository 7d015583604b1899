//! TLS for the server and the clients, with rustls (TLS 1.2 and 1.3 only,
//! the `ring` provider, no OpenSSL).
//!
//! - [`TlsAcceptor`]: the server side. It holds the certificate chain and
//!   key read from PEM files, and optionally a CA whose signature every
//!   client certificate must carry. [`TlsAcceptor::reload`] re-reads the
//!   files; connections already open keep the configuration they started
//!   with, new ones get the new one, and a reload that fails keeps the old
//!   configuration in force.
//! - [`TlsConnector`]: the client side: the CA that signs the server's
//!   certificate, and optionally a client certificate and key.
//!
//! A TLS stream is one more `Read + Write` ([`TlsStream`]) over a
//! `TcpStream`: the blocking, thread-per-connection design is unchanged,
//! and the handshake runs on the first read or write, under the socket's
//! timeouts.

use std::fs::File;
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::error::{Error, Result};

/// A TLS connection over TCP, server side.
pub type TlsStream = rustls::StreamOwned<ServerConnection, TcpStream>;
/// A TLS connection over TCP, client side.
pub type TlsClientStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// The TLS versions kvstore speaks: 1.3 and 1.2, nothing older.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, PEM (leaf first).
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of the
    /// CA certificates in this PEM file.
    pub client_ca: Option<PathBuf>,
}

/// The server side of TLS: builds a server connection for each accepted
/// socket from the configuration in force.
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    /// Reads the certificate, the key and the client CA (if any).
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming the file that cannot be read or holds no
    /// usable certificate or key, or a key that does not match the
    /// certificate.
    pub fn new(files: TlsFiles) -> Result<TlsAcceptor> {
        let config = server_config(&files)?;
        Ok(TlsAcceptor {
            files,
            current: RwLock::new(config),
        })
    }

    /// The files this acceptor reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files. Connections already open are not touched; new
    /// ones use the new configuration.
    ///
    /// # Errors
    ///
    /// As [`TlsAcceptor::new`]; the configuration in force then stays.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.files)?;
        *self.current.write() = config;
        Ok(())
    }

    /// Wraps an accepted socket. Nothing is read or written yet: the
    /// handshake runs on the first read or write of the stream.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if rustls cannot start a connection (it does not
    /// happen with a configuration [`TlsAcceptor::new`] accepted).
    pub fn accept(&self, socket: TcpStream) -> Result<TlsStream> {
        let config = Arc::clone(&self.current.read());
        let conn = ServerConnection::new(config).map_err(|e| Error::Tls(e.to_string()))?;
        Ok(rustls::StreamOwned::new(conn, socket))
    }
}

/// The client side of TLS: which CA to trust, which certificate to show.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    /// Trusts the CA certificates of the PEM file `ca`; presents
    /// `client` (certificate chain and key, PEM files) when the server
    /// asks for a client certificate.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming a file that cannot be read or holds no usable
    /// certificate or key.
    pub fn new(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsConnector> {
        TlsConnector::with_roots(root_store(ca)?, client)
    }

    /// Trusts the certificate authorities of the operating system's store
    /// (as a browser does); presents `client` as [`TlsConnector::new`].
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if the system store holds no usable certificate, or
    /// a client file cannot be used.
    pub fn with_system_roots(client: Option<(&Path, &Path)>) -> Result<TlsConnector> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_string(), |e| e.to_string());
            return Err(Error::Tls(format!(
                "no usable CA certificate in the system store ({why}); give a CA file"
            )));
        }
        TlsConnector::with_roots(roots, client)
    }

    fn with_roots(roots: RootCertStore, client: Option<(&Path, &Path)>) -> Result<TlsConnector> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| {
                    Error::Tls(format!("{} and {}: {e}", cert.display(), key.display()))
                })?,
        };
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    /// Starts TLS on a connected socket, checking that the server's
    /// certificate is valid for `server_name` (a DNS name or an IP
    /// address). The handshake runs on the first read or write.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if `server_name` is neither a DNS name nor an IP
    /// address.
    pub fn connect(&self, server_name: &str, socket: TcpStream) -> Result<TlsClientStream> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| Error::Tls(format!("server name {server_name:?}: {e}")))?;
        let conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(rustls::StreamOwned::new(conn, socket))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider())
                    .build()
                    .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| {
            Error::Tls(format!(
                "{} and {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

fn root_store(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
    }
    Ok(roots)
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_reader_iter(open(path)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_reader(open(path)?).map_err(|e| {
        Error::Tls(format!(
            "{}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// Whether an I/O error is a TLS failure (a bad handshake, a certificate
/// refused, plaintext on a TLS port) rather than a socket error.
pub fn is_tls_failure(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// The integration tests' throwaway PKI, for the unit tests below.
#[cfg(test)]
#[path = "../tests/common/pki.rs"]
mod test_pki;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::test_pki as pki;

    /// A throwaway CA with its server and client certificates, made from
    /// the integration tests' helper.
    struct Pki {
        ca: PathBuf,
        server: TlsFiles,
        client_cert: PathBuf,
        client_key: PathBuf,
    }

    fn make_pki(dir: &Path, ca_name: &str) -> Pki {
        let made = pki::make(dir, ca_name);
        Pki {
            ca: made.ca,
            server: TlsFiles {
                cert: made.server_cert,
                key: made.server_key,
                client_ca: None,
            },
            client_cert: made.client_cert,
            client_key: made.client_key,
        }
    }

    /// Serves one connection: echoes one line back. Returns the server's
    /// outcome (Ok with the line, or the handshake/read error).
    fn serve_one(
        acceptor: Arc<TlsAcceptor>,
    ) -> (u16, std::thread::JoinHandle<io::Result<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (socket, _) = listener.accept()?;
            let mut tls = acceptor.accept(socket).map_err(io::Error::other)?;
            let mut line = [0u8; 6];
            tls.read_exact(&mut line)?;
            tls.write_all(&line)?;
            tls.flush()?;
            Ok(line.to_vec())
        });
        (port, handle)
    }

    fn talk(connector: &TlsConnector, port: u16) -> io::Result<Vec<u8>> {
        let socket = TcpStream::connect(("127.0.0.1", port))?;
        let mut tls = connector
            .connect("127.0.0.1", socket)
            .map_err(io::Error::other)?;
        tls.write_all(b"hello\n")?;
        let mut back = [0u8; 6];
        tls.read_exact(&mut back)?;
        Ok(back.to_vec())
    }

    #[test]
    fn a_client_trusting_the_ca_talks_to_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = make_pki(tmp.path(), "ca");
        let acceptor = Arc::new(TlsAcceptor::new(pki.server.clone()).unwrap());
        let (port, server) = serve_one(acceptor);
        let connector = TlsConnector::new(&pki.ca, None).unwrap();
        assert_eq!(talk(&connector, port).unwrap(), b"hello\n");
        assert_eq!(server.join().unwrap().unwrap(), b"hello\n");
    }

    #[test]
    fn a_client_trusting_another_ca_refuses_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let pki_a = make_pki(tmp.path(), "ca");
        let other = tempfile::tempdir().unwrap();
        let pki_b = make_pki(other.path(), "other-ca");
        let acceptor = Arc::new(TlsAcceptor::new(pki_a.server.clone()).unwrap());
        let (port, server) = serve_one(acceptor);
        let err = talk(&TlsConnector::new(&pki_b.ca, None).unwrap(), port).unwrap_err();
        assert!(is_tls_failure(&err), "{err}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn client_certificates_are_required_when_a_client_ca_is_set() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = make_pki(tmp.path(), "ca");
        let files = TlsFiles {
            client_ca: Some(pki.ca.clone()),
            ..pki.server.clone()
        };
        let acceptor = Arc::new(TlsAcceptor::new(files).unwrap());

        // Without a certificate: refused.
        let (port, server) = serve_one(Arc::clone(&acceptor));
        let anonymous = TlsConnector::new(&pki.ca, None).unwrap();
        assert!(talk(&anonymous, port).is_err());
        let err = server.join().unwrap().unwrap_err();
        assert!(is_tls_failure(&err), "{err}");

        // With a certificate from another CA: refused.
        let other = tempfile::tempdir().unwrap();
        let stranger = make_pki(other.path(), "other-ca");
        let (port, server) = serve_one(Arc::clone(&acceptor));
        let foreign =
            TlsConnector::new(&pki.ca, Some((&stranger.client_cert, &stranger.client_key)))
                .unwrap();
        assert!(talk(&foreign, port).is_err());
        assert!(server.join().unwrap().is_err());

        // With a certificate signed by the CA: served.
        let (port, server) = serve_one(acceptor);
        let known = TlsConnector::new(&pki.ca, Some((&pki.client_cert, &pki.client_key))).unwrap();
        assert_eq!(talk(&known, port).unwrap(), b"hello\n");
        assert_eq!(server.join().unwrap().unwrap(), b"hello\n");
    }

    #[test]
    fn plaintext_on_a_tls_port_gets_no_data() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = make_pki(tmp.path(), "ca");
        let acceptor = Arc::new(TlsAcceptor::new(pki.server.clone()).unwrap());
        let (port, server) = serve_one(acceptor);
        let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain.write_all(b"get k\r\n").unwrap();
        let err = server.join().unwrap().unwrap_err();
        assert!(is_tls_failure(&err), "{err}");
        // Whatever comes back is a TLS alert, never the request's echo.
        let mut back = Vec::new();
        let _ = plain.read_to_end(&mut back);
        assert!(!back.windows(5).any(|w| w == b"get k"));
    }

    #[test]
    fn reload_takes_new_files_for_new_connections_and_keeps_the_old_on_error() {
        let tmp = tempfile::tempdir().unwrap();
        let first = make_pki(tmp.path(), "ca");
        let acceptor = Arc::new(TlsAcceptor::new(first.server.clone()).unwrap());
        let first_ca = TlsConnector::new(&first.ca, None).unwrap();

        // A broken key file: the reload fails, the old configuration stays.
        std::fs::write(&first.server.key, "not a key").unwrap();
        assert!(acceptor.reload().is_err());
        let (port, server) = serve_one(Arc::clone(&acceptor));
        assert_eq!(talk(&first_ca, port).unwrap(), b"hello\n");
        server.join().unwrap().unwrap();

        // New files from another CA under the same names: after the reload,
        // only clients of the new CA get in.
        let moved = tempfile::tempdir().unwrap();
        let second = make_pki(moved.path(), "second-ca");
        std::fs::copy(&second.server.cert, &first.server.cert).unwrap();
        std::fs::copy(&second.server.key, &first.server.key).unwrap();
        acceptor.reload().unwrap();
        let (port, server) = serve_one(Arc::clone(&acceptor));
        assert!(talk(&first_ca, port).is_err());
        assert!(server.join().unwrap().is_err());
        let (port, server) = serve_one(acceptor);
        let second_ca = TlsConnector::new(&second.ca, None).unwrap();
        assert_eq!(talk(&second_ca, port).unwrap(), b"hello\n");
        server.join().unwrap().unwrap();
    }

    #[test]
    fn unreadable_or_empty_files_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = make_pki(tmp.path(), "ca");
        let missing = TlsFiles {
            cert: tmp.path().join("nope.pem"),
            ..pki.server.clone()
        };
        let msg = TlsAcceptor::new(missing).unwrap_err().to_string();
        assert!(msg.contains("nope.pem"), "{msg}");
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let msg = TlsConnector::new(&empty, None).unwrap_err().to_string();
        assert!(
            msg.contains("empty.pem") && msg.contains("no PEM certificate"),
            "{msg}"
        );
    }
}
