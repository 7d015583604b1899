//! A throwaway PKI for the TLS tests: a CA, a server certificate for
//! 127.0.0.1 and localhost signed by it, and a client certificate.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files written into a directory.
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server's certificate (for 127.0.0.1 and localhost).
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Makes a CA named `ca_name` and its certificates in `dir`; file names
/// are prefixed with `ca_name`, so several PKIs can share a directory.
pub fn make(dir: &Path, ca_name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["client".into()]);
    Pki {
        ca: write(dir, &format!("{ca_name}-ca.pem"), &ca.pem()),
        server_cert: write(dir, &format!("{ca_name}-server.pem"), &server_cert),
        server_key: write(dir, &format!("{ca_name}-server.key"), &server_key),
        client_cert: write(dir, &format!("{ca_name}-client.pem"), &client_cert),
        client_key: write(dir, &format!("{ca_name}-client.key"), &client_key),
    }
}
