//! TLS to PostgreSQL: with a CA configured the shared log connects over
//! TLS only, checks the server's certificate against that CA and the host
//! name, and refuses a server it cannot authenticate.

#[path = "../../../src/bench/pgcluster.rs"]
mod pgcluster;

use phb_pglog::PgLog;
use phb_store::{SharedLog, SharedLogError};
use std::path::Path;

/// A CA and a server certificate it issued for `localhost`.
fn certificates() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "phb test database CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn with_a_ca_the_log_speaks_tls_only_to_a_server_it_can_authenticate() {
    let (ca, cert, key) = certificates();
    let tools = pgcluster::find_or_install("phb-pglog tests")
        .unwrap_or_else(|e| panic!("PostgreSQL is needed for this test: {e:#}"));
    let pg = pgcluster::Cluster::start_with(tools, Some((&cert, &key)))
        .unwrap_or_else(|e| panic!("starting PostgreSQL with TLS: {e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca);
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?connect_timeout=2",
        pg.port
    );

    let mut log = PgLog::new(&url, "ledger-x").unwrap();
    log.require_tls(&ca_file).unwrap();
    log.confirmed().expect("connects over TLS");
    let ssl = pg
        .psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'phb-ledger' AND s.ssl")
        .unwrap();
    assert_eq!(ssl.trim(), "1", "the session is encrypted");

    // Another CA: the server cannot be authenticated, nothing is sent.
    let (other_ca, _, _) = certificates();
    let other = write(dir.path(), "other.pem", &other_ca);
    let mut log = PgLog::new(&url, "ledger-x").unwrap();
    log.require_tls(&other).unwrap();
    match log.confirmed() {
        Err(SharedLogError::Unavailable(why)) => {
            assert!(why.contains("invalid peer certificate"), "{why}")
        }
        other => panic!("an unauthenticated server must be refused: {other:?}"),
    }

    // The right CA, but reached by a name the certificate does not carry.
    let by_ip = url.replace("localhost", "127.0.0.1");
    let mut log = PgLog::new(&by_ip, "ledger-x").unwrap();
    log.require_tls(&ca_file).unwrap();
    match log.confirmed() {
        Err(SharedLogError::Unavailable(why)) => {
            assert!(why.contains("not valid for name"), "{why}")
        }
        other => panic!("a certificate for another name must be refused: {other:?}"),
    }

    // A CA file with no certificate, and sslmode=disable with a CA, are
    // refused before connecting.
    let empty = write(dir.path(), "empty.pem", "");
    let mut log = PgLog::new(&url, "ledger-x").unwrap();
    assert!(log
        .require_tls(&empty)
        .unwrap_err()
        .contains("no PEM certificate"));
    let mut log = PgLog::new(&format!("{url}&sslmode=disable"), "ledger-x").unwrap();
    assert!(log
        .require_tls(&ca_file)
        .unwrap_err()
        .contains("sslmode=disable"));
}
