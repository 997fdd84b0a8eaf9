//! Test certificates: a certificate authority of its own for each test and
//! a server certificate it signed, in PEM, for the TLS tests of the node
//! channel (the collector's and the agent's).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The authority's certificate: what a client trusts.
    pub ca_pem: String,
    /// The server's certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl Pki {
    /// A new authority (named `tally test ca`) and a certificate for the
    /// server names `names` (DNS names or IP addresses) that it signed.
    pub fn new(names: &[&str]) -> Result<Self, rcgen::Error> {
        let ca = authority("ca")?;
        let key = KeyPair::generate()?;
        let names = names
            .iter()
            .map(|&name| name.to_owned())
            .collect::<Vec<_>>();
        let cert = CertificateParams::new(names)?.signed_by(&key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the server's certificate and key into `dir` (`cert.pem`,
    /// `key.pem`): their paths.
    pub fn write_server(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&cert, &self.cert_pem)?;
        fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// The certificate, in PEM, of another authority (named `tally test
/// <name>`), one that signed nothing: what a client that must be refused
/// trusts.
pub fn other_authority_pem(name: &str) -> Result<String, rcgen::Error> {
    authority(name).map(|ca| ca.pem())
}

/// A self-signed certificate authority named `tally test <name>`.
fn authority(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("tally test {name}"));
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_names_the_given_names() {
        let pki = Pki::new(&["127.0.0.1", "localhost"]).expect("pki");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.key_pem.contains("PRIVATE KEY"));
        assert_ne!(pki.ca_pem, other_authority_pem("other").expect("other"));
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pki.write_server(dir.path()).expect("write");
        assert_eq!(fs::read_to_string(cert).expect("cert"), pki.cert_pem);
        assert_eq!(fs::read_to_string(key).expect("key"), pki.key_pem);
    }
}
