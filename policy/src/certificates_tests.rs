//! The certificate check: which tenant's CA is asked, which thing a certificate names, and
//! what ends a session that authenticated with one.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::*;
use crate::credentials::KeyDigest;
use crate::model::{Tenant, TenantLimits, Thing};
use crate::{Credential, DenyReason, PolicyEvaluator, Snapshot, Subject};

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A leaf of `ca` with this common name and URI SAN, valid `days` from now.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    uri: Option<&str>,
    days: (i64, i64),
) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("URI"))];
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    let key = KeyPair::generate().expect("key");
    params.signed_by(&key, ca).expect("signed").der().clone()
}

fn tenant(name: &str, ca: Option<DeviceCa>) -> Tenant {
    Tenant {
        provisioning: Default::default(),
        name: name.into(),
        uid: String::new(),
        suspended: false,
        limits: TenantLimits::default(),
        web: Default::default(),
        engine: Default::default(),
        device_ca: ca,
    }
}

fn thing(tenant: &str, name: &str, mode: CredentialMode, x509: Option<ThingX509>) -> Thing {
    Thing {
        tenant: tenant.into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(format!("key-of-{tenant}-{name}").as_bytes())],
        disabled: false,
        mountpoint: None,
        max_connections: None,
        attributes: Default::default(),
        credential_mode: mode,
        x509,
    }
}

fn device_ca(ca: &CertifiedIssuer<'static, KeyPair>, revoked: &[&str]) -> DeviceCa {
    let revoked = revoked.iter().map(|s| (*s).to_owned());
    DeviceCa::new(vec![ca.der().to_vec()], revoked).expect("a CA")
}

struct World {
    acme: CertifiedIssuer<'static, KeyPair>,
    globex: CertifiedIssuer<'static, KeyPair>,
    snapshot: Snapshot,
}

/// acme and globex, each with its own CA and a thing `sensor`; acme also has `meter`
/// (named by common name `SN-42`) and `keyed` (keys only).
fn world() -> World {
    let (acme, globex) = (ca("acme device CA"), ca("globex device CA"));
    let mut s = Snapshot::new(1);
    s.upsert_tenant(tenant("acme", Some(device_ca(&acme, &[]))));
    s.upsert_tenant(tenant("globex", Some(device_ca(&globex, &[]))));
    let both = CredentialMode::KeyOrCertificate;
    s.upsert_thing(thing("acme", "sensor", both, Some(ThingX509::default())));
    s.upsert_thing(thing("globex", "sensor", both, Some(ThingX509::default())));
    let sn = ThingX509 {
        common_name: Some("SN-42".into()),
        revoked_serials: Vec::new(),
    };
    s.upsert_thing(thing(
        "acme",
        "meter",
        CredentialMode::Certificate,
        Some(sn),
    ));
    s.upsert_thing(thing("acme", "keyed", CredentialMode::Key, None));
    World {
        acme,
        globex,
        snapshot: s,
    }
}

fn by_cert(
    s: &Snapshot,
    cert: &CertificateDer<'static>,
    claimed: Option<(&str, &str)>,
) -> Result<Subject, DenyReason> {
    let chain = [cert.clone()];
    s.authenticate(&Credential::Certificate {
        chain: &chain,
        claimed,
        now: UnixTime::now(),
    })
    .map_err(|r| r.reason)
}

#[test]
fn a_certificate_names_its_thing_by_uri_or_common_name() {
    let w = world();
    let uri = leaf(
        &w.acme,
        "anything",
        Some("fleetward://acme/sensor"),
        (-1, 9),
    );
    let s = by_cert(&w.snapshot, &uri, None).expect("by URI SAN");
    assert_eq!((s.tenant.as_str(), s.name.as_str()), ("acme", "sensor"));
    assert!(s.certificate.is_some());
    // The common name alone: the only tenant with a CA of that issuer name.
    let cn = leaf(&w.acme, "sensor", None, (-1, 9));
    assert_eq!(
        by_cert(&w.snapshot, &cn, None).expect("by CN").tenant,
        "acme"
    );
    // A thing's subject.commonName maps a factory serial to it; its own name then does not.
    let sn = leaf(&w.acme, "SN-42", None, (-1, 9));
    assert_eq!(
        by_cert(&w.snapshot, &sn, None).expect("by rule").name,
        "meter"
    );
    let own = leaf(&w.acme, "meter", None, (-1, 9));
    assert_eq!(
        by_cert(&w.snapshot, &own, None),
        Err(DenyReason::BadCredential)
    );
    // A claimed name must be the named thing.
    assert!(by_cert(&w.snapshot, &cn, Some(("acme", "sensor"))).is_ok());
    assert_eq!(
        by_cert(&w.snapshot, &cn, Some(("acme", "meter"))),
        Err(DenyReason::BadCredential)
    );
}

#[test]
fn a_certificate_never_authenticates_in_another_tenant() {
    let w = world();
    // globex's CA signing a certificate that names acme's thing: acme's CA is asked.
    let forged = leaf(
        &w.globex,
        "sensor",
        Some("fleetward://acme/sensor"),
        (-1, 9),
    );
    assert_eq!(
        by_cert(&w.snapshot, &forged, None),
        Err(DenyReason::BadCredential)
    );
    // acme's certificate for `sensor`, claimed as globex's `sensor`.
    let acme = leaf(&w.acme, "sensor", None, (-1, 9));
    assert_eq!(
        by_cert(&w.snapshot, &acme, Some(("globex", "sensor"))),
        Err(DenyReason::BadCredential)
    );
    // Two tenants trusting CAs of one name: a certificate naming no tenant names neither.
    let mut s = w.snapshot.clone();
    let twin = ca("acme device CA");
    s.upsert_tenant(tenant("initech", Some(device_ca(&twin, &[]))));
    assert_eq!(by_cert(&s, &acme, None), Err(DenyReason::BadCredential));
    assert!(by_cert(&s, &acme, Some(("acme", "sensor"))).is_ok());
    s.remove_tenant("initech");
    assert!(
        by_cert(&s, &acme, None).is_ok(),
        "the index forgets a removed tenant's CA"
    );
}

#[test]
fn expired_revoked_and_keys_only_are_refused() {
    let w = world();
    let expired = leaf(&w.acme, "sensor", None, (-30, -1));
    assert_eq!(
        by_cert(&w.snapshot, &expired, None),
        Err(DenyReason::BadCredential)
    );
    let keyed = leaf(&w.acme, "keyed", None, (-1, 9));
    assert_eq!(
        by_cert(&w.snapshot, &keyed, None),
        Err(DenyReason::BadCredential)
    );
    // Revoked by the tenant's CRL, and by the thing's own list (any hex form).
    let good = leaf(&w.acme, "sensor", None, (-1, 9));
    let serial = CertificateNames::read(&good).expect("parses").serial;
    let mut s = w.snapshot.clone();
    s.upsert_tenant(tenant(
        "acme",
        Some(device_ca(&w.acme, &[&serial.to_uppercase()])),
    ));
    assert_eq!(by_cert(&s, &good, None), Err(DenyReason::BadCredential));
    let mut s = w.snapshot.clone();
    let x509 = ThingX509 {
        common_name: None,
        revoked_serials: vec![serial],
    };
    s.upsert_thing(thing(
        "acme",
        "sensor",
        CredentialMode::KeyOrCertificate,
        Some(x509),
    ));
    assert_eq!(by_cert(&s, &good, None), Err(DenyReason::BadCredential));
}

#[test]
fn certificate_mode_refuses_the_key() {
    let w = world();
    let by_key = |thing: &str| {
        let key = format!("key-of-acme-{thing}");
        w.snapshot
            .authenticate(&Credential::Thing {
                tenant: "acme",
                thing,
                key: key.as_bytes(),
            })
            .map_err(|r| r.reason)
    };
    assert!(by_key("sensor").is_ok(), "keyOrCertificate takes the key");
    assert_eq!(by_key("meter"), Err(DenyReason::BadCredential));
}

#[test]
fn a_live_certificate_session_ends_on_revocation_ca_removal_or_mode_change() {
    let w = world();
    let cert = leaf(&w.acme, "sensor", None, (-1, 9));
    let subject = by_cert(&w.snapshot, &cert, None).expect("authenticates");
    assert!(w.snapshot.check_subject(&subject).is_ok());
    let serial = subject.certificate.as_ref().expect("sealed").serial.clone();
    let ends = |s: &Snapshot| s.check_subject(&subject).map_err(|r| r.reason);

    let mut revoked = w.snapshot.clone();
    revoked.upsert_tenant(tenant("acme", Some(device_ca(&w.acme, &[&serial]))));
    assert_eq!(ends(&revoked), Err(DenyReason::BadCredential));

    // A rotation that keeps the old CA beside a new one keeps the session.
    let mut rotated = w.snapshot.clone();
    let new = ca("acme device CA 2");
    let both = DeviceCa::new(vec![new.der().to_vec(), w.acme.der().to_vec()], Vec::new());
    rotated.upsert_tenant(tenant("acme", Some(both.expect("a CA"))));
    assert!(ends(&rotated).is_ok());
    let mut dropped = w.snapshot.clone();
    dropped.upsert_tenant(tenant("acme", Some(device_ca(&new, &[]))));
    assert_eq!(ends(&dropped), Err(DenyReason::BadCredential));

    let mut keys_only = w.snapshot.clone();
    keys_only.upsert_thing(thing("acme", "sensor", CredentialMode::Key, None));
    assert_eq!(ends(&keys_only), Err(DenyReason::BadCredential));

    let mut expired = subject.clone();
    let mut seal = (**expired.certificate.as_ref().expect("sealed")).clone();
    seal.not_after = 1;
    expired.certificate = Some(Arc::new(seal));
    assert!(w.snapshot.check_subject(&expired).is_err());
}

#[test]
fn a_bundle_must_hold_ca_certificates() {
    let w = world();
    let not_ca = leaf(&w.acme, "sensor", None, (-1, 9));
    assert!(matches!(
        DeviceCa::new(vec![not_ca.to_vec()], Vec::new()),
        Err(CaError::NotCa { index: 1, .. })
    ));
    assert_eq!(
        DeviceCa::from_pem(b"nothing", Vec::new()),
        Err(CaError::Empty)
    );
    let pem = w.acme.pem();
    let ca = DeviceCa::from_pem(pem.as_bytes(), ["0A:0b".to_owned(), "zz".to_owned()]);
    let ca = ca.expect("parses");
    assert_eq!(ca.revoked().iter().collect::<Vec<_>>(), ["a0b"]);
    let json = serde_json::to_string(&ca).expect("serializes");
    assert_eq!(serde_json::from_str::<DeviceCa>(&json).expect("reads"), ca);
}

#[test]
fn serials_normalize() {
    assert_eq!(normalize_serial("00:1A:ff").as_deref(), Some("1aff"));
    assert_eq!(normalize_serial("000").as_deref(), Some("0"));
    assert_eq!(normalize_serial("").as_deref(), None);
    assert_eq!(normalize_serial("12g4"), None);
    assert_eq!(
        thing_uri("fleetward://acme/sensor"),
        Some(("acme".into(), "sensor".into()))
    );
    assert_eq!(thing_uri("fleetward://acme/a/b"), None);
    assert_eq!(thing_uri("https://acme/sensor"), None);
}
