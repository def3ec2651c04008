//! Device certificates in the index: a tenant's CA from its Secret, its CRL or its
//! cert-manager issuer; a thing's credential mode, rules and certificate status.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};

use super::*;

/// A CA of its own for one tenant.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate for `cn` with serial `serial`.
    fn leaf(&self, cn: &str, serial: u64) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("a key");
        params.signed_by(&key, &*self.issuer).expect("a leaf").pem()
    }

    /// A CRL revoking `serials`, PEM or DER.
    fn crl(&self, serials: &[u64], pem: bool) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer: &Issuer<'_, KeyPair> = &self.issuer;
        let crl = params.signed_by(issuer).expect("a CRL");
        if pem {
            crl.pem().expect("PEM").into_bytes()
        } else {
            crl.der().to_vec()
        }
    }
}

fn secret_bytes(ns: &str, name: &str, entries: &[(&str, &[u8])]) -> Resource {
    Resource::Secret(SecretData {
        namespace: ns.into(),
        name: name.into(),
        entries: entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect(),
    })
}

fn device_ca(secret: Option<&str>, issuer: Option<(&str, crds::IssuerKind)>) -> crds::DeviceCA {
    crds::DeviceCA {
        secret_name: secret.map(str::to_owned),
        issuer_ref: issuer.map(|(name, kind)| crds::IssuerRef {
            name: name.into(),
            kind,
        }),
        crl_secret_name: None,
    }
}

fn ca_tenant(name: &str, ca: crds::DeviceCA) -> Resource {
    mk_tenant(
        name,
        crds::TenantSpec {
            device_ca: Some(ca),
            ..tenant_spec()
        },
    )
}

fn x509_thing(
    ns: &str,
    name: &str,
    mode: Option<crds::CredentialMode>,
    x509: crds::ThingX509,
) -> Resource {
    let mut t = mk_thing(ns, name);
    t.spec.credentials = Some(crds::ThingCredentials {
        secret_name: None,
        mode,
        x509: Some(x509),
    });
    Resource::Thing(t)
}

/// The `DeviceCA` condition of a tenant.
fn device_ca_condition(index: &Index, tenant: &str) -> Option<Readiness> {
    match &*index.status(&ObjectKey::tenant(tenant))?.facts {
        Facts::Tenant { device_ca, .. } => device_ca.clone(),
        _ => None,
    }
}

fn thing_facts(index: &Index, ns: &str, name: &str) -> Facts {
    Facts::clone(&index.status(&thing_key(ns, name)).expect("a status").facts)
}

fn x509_facts(index: &Index, ns: &str, name: &str) -> X509Facts {
    match thing_facts(index, ns, name) {
        Facts::Thing { x509: Some(x), .. } => *x,
        other => panic!("no x509 facts: {other:?}"),
    }
}

#[test]
fn a_tenant_ca_from_its_secret_reaches_the_snapshot_and_things_accept_certificates() {
    let ca = Ca::new("acme devices");
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    index.apply(mk_secret("acme", "sensor-1-credentials", &[("key", KEY_A)]));
    index.apply(x509_thing("acme", "sensor-1", None, Default::default()));
    index.commit().expect("a commit");

    let tenant = index.snapshot().tenant("acme").expect("served");
    let loaded = tenant.device_ca.as_ref().expect("a device CA");
    assert_eq!(loaded.certificates().count(), 1);
    let condition = device_ca_condition(&index, "acme").expect("a DeviceCA condition");
    assert!(condition.ready, "{condition:?}");
    assert_eq!(condition.reason, Reason::CaLoaded);
    assert_eq!(
        ready(&index, &ObjectKey::tenant("acme")),
        (true, Reason::Accepted)
    );

    let thing = index.snapshot().thing("acme", "sensor-1").expect("served");
    assert_eq!(
        thing.credential_mode,
        policy::CredentialMode::KeyOrCertificate
    );
    assert_eq!(thing.key_digests.len(), 1, "keyOrCertificate keeps the key");
    assert!(thing.x509.is_some());
    let status = index
        .status(&thing_key("acme", "sensor-1"))
        .expect("status");
    assert!(status.readiness.ready);
    assert!(
        status.readiness.message.contains("certificates"),
        "{}",
        status.readiness.message
    );
}

#[test]
fn a_certificate_only_thing_pushes_no_key_and_needs_no_key_secret() {
    let ca = Ca::new("acme devices");
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    // A key in place anyway: it must not reach the snapshot.
    index.apply(mk_secret("acme", "gw-credentials", &[("key", KEY_A)]));
    index.apply(x509_thing(
        "acme",
        "gw",
        Some(crds::CredentialMode::Certificate),
        Default::default(),
    ));
    index.apply(x509_thing(
        "acme",
        "meter",
        Some(crds::CredentialMode::Certificate),
        Default::default(),
    ));
    index.commit().expect("a commit");
    for name in ["gw", "meter"] {
        let thing = index.snapshot().thing("acme", name).expect("served");
        assert!(thing.key_digests.is_empty(), "{name}: no key digests");
        assert_eq!(thing.credential_mode, policy::CredentialMode::Certificate);
        assert_eq!(
            ready(&index, &thing_key("acme", name)),
            (true, Reason::Accepted)
        );
        let Facts::Thing { mode, keys, .. } = thing_facts(&index, "acme", name) else {
            panic!("thing facts");
        };
        assert_eq!((mode, keys), (policy::CredentialMode::Certificate, 0));
    }
}

#[test]
fn a_missing_ca_secret_keeps_the_tenant_served_without_a_ca_and_says_so() {
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
    index.apply(mk_secret("acme", "both-credentials", &[("key", KEY_A)]));
    index.apply(x509_thing("acme", "both", None, Default::default()));
    index.apply(x509_thing(
        "acme",
        "only-cert",
        Some(crds::CredentialMode::Certificate),
        Default::default(),
    ));
    index.commit().expect("a commit");

    assert_eq!(
        ready(&index, &ObjectKey::tenant("acme")),
        (true, Reason::Accepted)
    );
    let tenant = index.snapshot().tenant("acme").expect("still served");
    assert!(tenant.device_ca.is_none());
    let condition = device_ca_condition(&index, "acme").expect("a DeviceCA condition");
    assert!(!condition.ready);
    assert_eq!(condition.reason, Reason::SecretNotFound);
    assert!(
        condition.message.contains("acme/acme-ca"),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("ca.crt"),
        "{}",
        condition.message
    );

    let both = index.status(&thing_key("acme", "both")).expect("status");
    assert!(both.readiness.ready, "its key works meanwhile");
    assert!(
        both.readiness.message.contains("not accepted yet"),
        "{}",
        both.readiness.message
    );
    assert_eq!(
        ready(&index, &thing_key("acme", "only-cert")),
        (false, Reason::NoDeviceCa)
    );
    assert!(index.snapshot().thing("acme", "only-cert").is_none());

    // The Secret appears: the CA loads and the certificate-only thing is served.
    let ca = Ca::new("acme devices");
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    index.commit().expect("a commit");
    assert!(
        index
            .snapshot()
            .tenant("acme")
            .expect("served")
            .device_ca
            .is_some()
    );
    assert_eq!(
        ready(&index, &thing_key("acme", "only-cert")),
        (true, Reason::Accepted)
    );
}

#[test]
fn a_ca_secret_without_a_ca_certificate_is_invalid() {
    let ca = Ca::new("acme devices");
    let leaf = ca.leaf("not-a-ca", 7);
    for (entries, needle) in [
        (vec![("ca.crt", leaf.as_bytes())], "not a CA"),
        (vec![("ca.crt", &b"hello"[..])], "no PEM certificate"),
        (vec![("tls.crt", ca.pem().as_bytes())], "does not exist"),
    ] {
        let mut index = Index::new();
        index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
        index.apply(secret_bytes("acme", "acme-ca", &entries));
        index.commit().expect("a commit");
        assert!(
            index
                .snapshot()
                .tenant("acme")
                .expect("served")
                .device_ca
                .is_none()
        );
        let condition = device_ca_condition(&index, "acme").expect("a DeviceCA condition");
        assert_eq!(condition.reason, Reason::InvalidCa, "{needle}");
        assert!(condition.message.contains(needle), "{}", condition.message);
    }
}

#[test]
fn a_crl_revokes_its_serials_and_a_bad_or_missing_one_drops_the_ca() {
    let ca = Ca::new("acme devices");
    for pem in [true, false] {
        let mut index = Index::new();
        let mut spec = device_ca(Some("acme-ca"), None);
        spec.crl_secret_name = Some("acme-crl".into());
        index.apply(ca_tenant("acme", spec));
        index.apply(secret_bytes(
            "acme",
            "acme-ca",
            &[("ca.crt", ca.pem().as_bytes())],
        ));
        index.commit().expect("a commit");
        let condition = device_ca_condition(&index, "acme").expect("condition");
        assert_eq!(
            condition.reason,
            Reason::SecretNotFound,
            "the CRL is missing"
        );
        assert!(
            condition.message.contains("acme/acme-crl"),
            "{}",
            condition.message
        );
        assert!(
            index
                .snapshot()
                .tenant("acme")
                .expect("served")
                .device_ca
                .is_none(),
            "no CA without its CRL: a revoked certificate must not get in"
        );

        index.apply(secret_bytes(
            "acme",
            "acme-crl",
            &[("ca.crl", &ca.crl(&[0x0abc, 77], pem))],
        ));
        index.commit().expect("a commit");
        let loaded = index
            .snapshot()
            .tenant("acme")
            .and_then(|t| t.device_ca.clone())
            .expect("a device CA");
        assert_eq!(
            loaded.revoked().iter().cloned().collect::<Vec<_>>(),
            vec!["4d".to_owned(), "abc".to_owned()],
            "pem: {pem}"
        );

        index.apply(secret_bytes(
            "acme",
            "acme-crl",
            &[("ca.crl", b"not a crl")],
        ));
        index.commit().expect("a commit");
        let condition = device_ca_condition(&index, "acme").expect("condition");
        assert_eq!(condition.reason, Reason::InvalidCrl);
        assert!(
            index
                .snapshot()
                .tenant("acme")
                .expect("served")
                .device_ca
                .is_none()
        );
    }
}

#[test]
fn a_tenant_never_gets_another_namespaces_ca_or_issuer() {
    let ca = Ca::new("acme devices");
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("shared-ca"), None)));
    index.apply(secret_bytes(
        "acme",
        "shared-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    index.apply(secret_bytes(
        "acme",
        "issuer-ca",
        &[("tls.crt", ca.pem().as_bytes())],
    ));
    index.set_issuer(
        IssuerKey::Issuer {
            namespace: "acme".into(),
            name: "devices".into(),
        },
        Some(IssuerCa::Ca {
            secret_name: "issuer-ca".into(),
        }),
    );
    // globex names the same Secret and the same Issuer, in its own namespace.
    index.apply(ca_tenant("globex", device_ca(Some("shared-ca"), None)));
    index.apply(ca_tenant(
        "initech",
        device_ca(None, Some(("devices", crds::IssuerKind::Issuer))),
    ));
    index.commit().expect("a commit");

    assert!(
        index
            .snapshot()
            .tenant("acme")
            .expect("served")
            .device_ca
            .is_some()
    );
    for (tenant, reason) in [
        ("globex", Reason::SecretNotFound),
        ("initech", Reason::IssuerNotFound),
    ] {
        assert!(
            index
                .snapshot()
                .tenant(tenant)
                .expect("served")
                .device_ca
                .is_none(),
            "{tenant}"
        );
        let condition = device_ca_condition(&index, tenant).expect("condition");
        assert_eq!(condition.reason, reason, "{tenant}");
    }
}

#[test]
fn revoked_serials_are_normalized_and_a_malformed_one_is_refused() {
    let ca = Ca::new("acme devices");
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    let rules = |serials: &[&str]| crds::ThingX509 {
        revoked_serials: serials.iter().map(|s| (*s).to_owned()).collect(),
        subject: Some(crds::X509Subject {
            common_name: Some("SN-0042".into()),
        }),
        ..Default::default()
    };
    let cert = Some(crds::CredentialMode::Certificate);
    index.apply(x509_thing("acme", "good", cert, rules(&["0A:BC", "00ff"])));
    index.apply(x509_thing("acme", "bad", cert, rules(&["0A:BC", "xyz"])));
    index.commit().expect("a commit");

    let good = index.snapshot().thing("acme", "good").expect("served");
    let x509 = good.x509.as_ref().expect("rules");
    assert_eq!(
        x509.revoked_serials,
        vec!["abc".to_owned(), "ff".to_owned()]
    );
    assert_eq!(x509.common_name.as_deref(), Some("SN-0042"));

    assert_eq!(
        ready(&index, &thing_key("acme", "bad")),
        (false, Reason::InvalidSpec)
    );
    let message = &index
        .status(&thing_key("acme", "bad"))
        .expect("status")
        .readiness
        .message;
    assert!(
        message.contains("revokedSerials[1]") && message.contains("xyz"),
        "{message}"
    );
    assert!(index.snapshot().thing("acme", "bad").is_none());

    // A serial listed in the status (by whoever revokes without owning the spec) counts too,
    // and a status change alone reaches the snapshot.
    let Resource::Thing(mut good) = x509_thing("acme", "good", cert, rules(&["0A:BC", "00ff"]))
    else {
        unreachable!("x509_thing makes a Thing")
    };
    good.status = Some(crds::ThingStatus {
        revoked_serials: vec!["01:02".into()],
        ..Default::default()
    });
    index.apply(Resource::Thing(good));
    index.commit().expect("a status revocation commits");
    let good = index.snapshot().thing("acme", "good").expect("served");
    let serials = &good.x509.as_ref().expect("rules").revoked_serials;
    assert_eq!(serials, &["102", "abc", "ff"]);
}

#[test]
fn a_things_tls_secret_shows_in_its_status() {
    let ca = Ca::new("acme devices");
    let mut index = Index::new();
    index.apply(ca_tenant("acme", device_ca(Some("acme-ca"), None)));
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    let cert = Some(crds::CredentialMode::Certificate);
    index.apply(x509_thing("acme", "sensor-1", cert, Default::default()));
    index.commit().expect("a commit");
    let certificate = x509_facts(&index, "acme", "sensor-1").certificate;
    assert!(certificate.is_none(), "no TLS Secret yet");

    let leaf = ca.leaf("sensor-1", 0x1f2e);
    index.apply(secret_bytes(
        "acme",
        "sensor-1-tls",
        &[("tls.crt", leaf.as_bytes())],
    ));
    index.commit().expect("a commit");
    let certificate = x509_facts(&index, "acme", "sensor-1").certificate;
    let c = certificate.expect("the certificate's facts");
    assert_eq!(c.secret_name, "sensor-1-tls");
    assert_eq!(c.serial, "1f2e");
    assert_eq!(c.fingerprint.len(), 12);
    assert!(c.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    let not_after = c.not_after.expect("notAfter");
    assert!(
        not_after.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "RFC 3339: {not_after}"
    );
}

#[test]
fn an_issuers_ca_is_the_trust_and_things_that_ask_get_a_certificate_request() {
    let ca = Ca::new("cluster devices");
    let mut index = Index::new();
    index.apply(ca_tenant(
        "acme",
        device_ca(None, Some(("devices", crds::IssuerKind::ClusterIssuer))),
    ));
    index.apply(x509_thing(
        "acme",
        "sensor-1",
        Some(crds::CredentialMode::Certificate),
        crds::ThingX509 {
            issue: true,
            ..Default::default()
        },
    ));
    index.commit().expect("a commit");
    assert_eq!(
        device_ca_condition(&index, "acme").map(|c| c.reason),
        Some(Reason::IssuerNotFound)
    );
    assert!(index.cluster_issuer_secrets().is_empty());

    // An ACME issuer: its CA is unknown.
    let key = IssuerKey::ClusterIssuer {
        name: "devices".into(),
    };
    index.set_issuer(
        key.clone(),
        Some(IssuerCa::NotCa {
            issuer_type: "acme".into(),
        }),
    );
    index.commit().expect("a commit");
    let condition = device_ca_condition(&index, "acme").expect("condition");
    assert_eq!(condition.reason, Reason::NotACaIssuer);
    assert!(
        condition.message.contains("secretName"),
        "{}",
        condition.message
    );

    // A CA issuer whose Secret the operator reads in cert-manager's namespace.
    index.set_issuer(
        key,
        Some(IssuerCa::Ca {
            secret_name: "devices-ca".into(),
        }),
    );
    index.commit().expect("a commit");
    assert_eq!(
        index.cluster_issuer_secrets(),
        BTreeSet::from(["devices-ca".to_owned()])
    );
    assert_eq!(
        device_ca_condition(&index, "acme").map(|c| c.reason),
        Some(Reason::SecretNotFound)
    );
    index.set_issuer_secret(
        "devices-ca",
        Some(SecretData {
            namespace: "cert-manager".into(),
            name: "devices-ca".into(),
            entries: [
                ("tls.crt".to_owned(), ca.pem().into_bytes()),
                // cert-manager repeats a self-signed CA in ca.crt: one anchor.
                ("ca.crt".to_owned(), ca.pem().into_bytes()),
            ]
            .into(),
        }),
    );
    index.commit().expect("a commit");
    let loaded = index
        .snapshot()
        .tenant("acme")
        .and_then(|t| t.device_ca.clone())
        .expect("the issuer's CA");
    assert_eq!(loaded.certificates().count(), 1);
    assert_eq!(
        ready(&index, &thing_key("acme", "sensor-1")),
        (true, Reason::Accepted)
    );
}

/// A tenant with a CA Secret and a ClusterIssuer, a thing that asks for a certificate
/// (`sensor-1`) and one that brings its own (`byo`).
fn asking(ca: &Ca) -> Index {
    let mut index = Index::new();
    index.apply(ca_tenant(
        "acme",
        device_ca(
            Some("acme-ca"),
            Some(("devices", crds::IssuerKind::ClusterIssuer)),
        ),
    ));
    index.apply(x509_thing(
        "acme",
        "byo",
        Some(crds::CredentialMode::Certificate),
        Default::default(),
    ));
    index.apply(secret_bytes(
        "acme",
        "acme-ca",
        &[("ca.crt", ca.pem().as_bytes())],
    ));
    index.apply(x509_thing(
        "acme",
        "sensor-1",
        Some(crds::CredentialMode::Certificate),
        crds::ThingX509 {
            issue: true,
            ..Default::default()
        },
    ));
    index.set_issuer(
        IssuerKey::ClusterIssuer {
            name: "devices".into(),
        },
        Some(IssuerCa::Ca {
            secret_name: "devices-ca".into(),
        }),
    );
    index.commit().expect("a commit");
    index
}

#[test]
fn a_thing_that_asks_gets_a_certificate_request_and_its_condition() {
    let index = asking(&Ca::new("devices"));
    assert!(
        index.cluster_issuer_secrets().is_empty(),
        "with a secretName of its own, the issuer's Secret is not read"
    );

    let byo = x509_facts(&index, "acme", "byo");
    assert!(
        byo.issue.is_none() && byo.condition.is_none(),
        "without issue, no request"
    );
    let X509Facts {
        issue,
        condition: certificate_condition,
        ..
    } = x509_facts(&index, "acme", "sensor-1");
    let request = issue.expect("a certificate request");
    let fields = [
        request.tenant.as_str(),
        &request.common_name,
        &request.secret_name,
        &request.issuer_name,
        request.issuer_kind,
    ];
    assert_eq!(
        fields,
        [
            "acme",
            "sensor-1",
            "sensor-1-tls",
            "devices",
            "ClusterIssuer"
        ]
    );
    let pending = certificate_condition.expect("a Certificate condition");
    assert_eq!(
        (pending.ready, pending.reason),
        (false, Reason::CertificatePending)
    );
}

#[test]
fn a_thing_says_when_cert_manager_is_missing_and_when_its_certificate_is_issued() {
    let ca = Ca::new("devices");
    let mut index = asking(&ca);
    index.set_cert_manager_installed(false);
    index.commit().expect("a commit");
    let missing = x509_facts(&index, "acme", "sensor-1")
        .condition
        .expect("a condition");
    assert_eq!(missing.reason, Reason::CertManagerMissing);
    assert!(
        missing.message.contains("install cert-manager"),
        "{}",
        missing.message
    );

    index.set_cert_manager_installed(true);
    index.apply(secret_bytes(
        "acme",
        "sensor-1-tls",
        &[("tls.crt", ca.leaf("sensor-1", 99).as_bytes())],
    ));
    index.commit().expect("a commit");
    let issued = x509_facts(&index, "acme", "sensor-1")
        .condition
        .expect("a condition");
    assert_eq!((issued.ready, issued.reason), (true, Reason::Issued));
}
