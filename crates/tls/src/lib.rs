//! The TLS client side of every `https://` connection pow makes: tracker announces, web seeds,
//! torrent stores. One [`rustls::ClientConfig`] per process, built on first use: the *ring*
//! crypto provider (a small C/asm build, where rustls's default aws-lc is a long CMake one), and
//! the system's CA certificates as OpenSSL and curl find them (Debian's `ca-certificates`), so
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` replace them for a private CA, as they do for those tools.
//!
//! Certificates are always verified: a name or chain that does not check out fails the
//! connection with rustls's reason (e.g. "invalid peer certificate: UnknownIssuer"). With no CA
//! certificate found at all, a warning says so once and every https connection fails that way.
//! HTTP/1.1 only (no ALPN): the clients speak nothing else.

use std::sync::{Arc, OnceLock};

pub use rustls;

/// What to add to an error message that says the certificate chain did not verify: how to
/// trust a private CA. Empty for any other error.
pub fn hint(error: &str) -> &'static str {
    if error.contains("UnknownIssuer") {
        " (the certificate is not signed by a CA this system trusts; for a private CA, set \
         SSL_CERT_FILE to its certificate)"
    } else {
        ""
    }
}

/// The shared client configuration.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = system_roots();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Trust anchors from the system store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`). Unreadable or
/// unparsable entries are skipped, as OpenSSL skips them.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!("CA certificates: {error}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!("CA certificates: {ignored} could not be parsed");
    }
    if added == 0 {
        tracing::warn!(
            "no CA certificates found (install ca-certificates, or set SSL_CERT_FILE): \
             every https:// connection will fail"
        );
    }
    roots
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_config_for_the_process() {
        let a = super::client_config();
        let b = super::client_config();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(a.alpn_protocols.is_empty(), "HTTP/1.1 only");
    }

    #[test]
    fn an_unknown_issuer_gets_the_hint_and_nothing_else_does() {
        assert!(super::hint("invalid peer certificate: UnknownIssuer").contains("SSL_CERT_FILE"));
        assert_eq!(super::hint("connection refused"), "");
    }
}
