//! Transport security (issue 11): TLS and mutual TLS with certificates made
//! at test time (rcgen). Plaintext and certificate-less clients are refused;
//! with `tls.bind_organisation` a connection reads and signs only as the
//! organisation its certificate names; read signatures with a nonce are
//! single-use, and `auth.require_read_nonce` refuses calls without one; the
//! CLI reaches an https:// server with the CA and its certificate from the
//! environment.

mod common;

use common::*;
use phb_client::{event, kinds, methods, Signer};
use phb_proto::v1 as pb;
use phb_proto::v1::ledger_service_client::LedgerServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_phb-ledger");

struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "phb test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            ca,
            ca_key,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `cn` (and `localhost`/127.0.0.1 as its names):
    /// writes NAME.pem and NAME.key, returns their paths.
    fn issue(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

async fn tls_client(
    port: u16,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<LedgerServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(c).unwrap(),
            std::fs::read(k).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(LedgerServiceClient::new(channel))
}

fn signed(signer: &Signer, id: &str, budget: &str, kind: phb_client::Kind) -> pb::SignedEvent {
    signer.sign(&event(LEDGER_ID, id, budget, kind))
}

async fn append(
    c: &mut LedgerServiceClient<Channel>,
    events: Vec<pb::SignedEvent>,
) -> Result<Vec<pb::AppendResult>, tonic::Status> {
    c.append(pb::AppendRequest {
        events,
        atomic: true,
    })
    .await
    .map(|r| r.into_inner().results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_binds_connections_to_organisations_and_reads_are_single_use() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = Pki::new(scratch.path());
    let server_cert = pki.issue("server", "phb-ledger");
    let root_cert = pki.issue("root", "root");
    let icb_cert = pki.issue("icb", "icb-tls");
    let env = |k: &str, v: &Path| (k.into(), v.as_os_str().to_owned());
    let server = Server::start_with(ServerOptions {
        env: vec![
            env("PHB_LEDGER_TLS_CERT", &server_cert.0),
            env("PHB_LEDGER_TLS_KEY", &server_cert.1),
            env("PHB_LEDGER_TLS_CLIENT_CA", &scratch.path().join("ca.pem")),
            ("PHB_LEDGER_TLS_BIND_ORGANISATION".into(), "true".into()),
            ("PHB_LEDGER_REQUIRE_READ_NONCE".into(), "true".into()),
        ],
        ..ServerOptions::default()
    });
    let port = server.addr.port();
    let ca = scratch.path().join("ca.pem");
    assert!(
        server.stderr().contains("transport=\"mutual TLS\""),
        "{}",
        server.stderr()
    );

    // Plaintext to a TLS port: no answer.
    let plain = LedgerServiceClient::connect(format!("http://127.0.0.1:{port}")).await;
    if let Ok(mut c) = plain {
        let r = c.append(pb::AppendRequest::default()).await;
        assert!(r.is_err(), "plaintext must not be served: {r:?}");
    }
    // TLS without a client certificate: refused in the handshake.
    let anonymous = match tls_client(port, &ca, None).await {
        Ok(mut c) => c.append(pb::AppendRequest::default()).await.map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(anonymous.is_err(), "a client certificate is required");

    // Root's connection registers the organisations.
    let root = &server.root;
    let icb = Signer::generate("icb-tls");
    let auditor = Signer::generate("aud-tls");
    let mut as_root = tls_client(port, &ca, Some(&root_cert)).await.unwrap();
    let regs = vec![
        signed(
            root,
            "reg-icb",
            "",
            kinds::register(
                &icb.id,
                &[pb::Role::Commissioner],
                &icb.public_key().to_bytes(),
            ),
        ),
        signed(
            root,
            "reg-aud",
            "",
            kinds::register(
                &auditor.id,
                &[pb::Role::Auditor],
                &auditor.public_key().to_bytes(),
            ),
        ),
    ];
    for r in append(&mut as_root, regs).await.unwrap() {
        assert_written(&r);
    }
    // An event signed by another organisation is refused on root's
    // connection, whatever its signature.
    let open = signed(
        &icb,
        "open-1",
        "tls-1",
        kinds::open("holder-tls", &icb.id, pb::Management::Notional, "", ""),
    );
    let refused = append(&mut as_root, vec![open.clone()]).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("icb-tls"), "{refused:?}");

    // The commissioner's own connection: its events and its reads.
    let mut as_icb = tls_client(port, &ca, Some(&icb_cert)).await.unwrap();
    assert_written(&append(&mut as_icb, vec![open]).await.unwrap()[0]);
    let list = |s: &Signer| {
        s.request(
            methods::LIST_BALANCES,
            pb::ListBalancesRequest {
                page_size: 10,
                ..Default::default()
            },
        )
    };
    let page = as_icb.list_balances(list(&icb)).await.unwrap().into_inner();
    assert_eq!(page.balances.len(), 1);
    // Reading as another organisation over this connection: refused.
    let other = as_icb.list_balances(list(&auditor)).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");

    // A signed read call is single-use: the same metadata again is refused.
    let first = list(&icb);
    let metadata = first.metadata().clone();
    as_icb.list_balances(first).await.unwrap();
    let mut replay = tonic::Request::new(pb::ListBalancesRequest {
        page_size: 10,
        ..Default::default()
    });
    *replay.metadata_mut() = metadata;
    let replayed = as_icb.list_balances(replay).await.unwrap_err();
    assert_eq!(replayed.code(), Code::Unauthenticated, "{replayed:?}");
    assert!(replayed.message().contains("already used"), "{replayed:?}");
    // Without a nonce: refused, as this server requires one.
    let mut bare = tonic::Request::new(pb::ListBalancesRequest::default());
    icb.authorize_at(&mut bare, methods::LIST_BALANCES, phb_client::unix_now());
    bare.metadata_mut().remove(phb_client::NONCE_HEADER);
    let ts = bare
        .metadata()
        .get(phb_client::TIMESTAMP_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let sig = icb.sign_read(&phb_client::read_signing_message(
        methods::LIST_BALANCES,
        ts.parse().unwrap(),
    ));
    bare.metadata_mut()
        .insert(phb_client::SIGNATURE_HEADER, sig.parse().unwrap());
    let no_nonce = as_icb.list_balances(bare).await.unwrap_err();
    assert_eq!(no_nonce.code(), Code::Unauthenticated, "{no_nonce:?}");
    assert!(no_nonce.message().contains("x-phb-nonce"), "{no_nonce:?}");

    // The CLI over TLS: the CA and the organisation's certificate from the
    // environment.
    let key_file = scratch.path().join("icb.secret");
    std::fs::write(&key_file, icb.secret_hex()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cli = |with_ca: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args([
            "balance",
            "--server",
            &format!("https://localhost:{port}"),
            "--signer",
            "icb-tls",
            "--key",
        ])
        .arg(&key_file)
        .env("PHB_LEDGER_TLS_CERT", &icb_cert.0)
        .env("PHB_LEDGER_TLS_KEY", &icb_cert.1);
        if with_ca {
            c.env("PHB_LEDGER_TLS_CA", &ca);
        } else {
            c.env_remove("PHB_LEDGER_TLS_CA");
        }
        c.output().unwrap()
    };
    let out = cli(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"budget_id\":\"tls-1\""));
    let out = cli(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PHB_LEDGER_TLS_CA"));
    server.kill();
}
