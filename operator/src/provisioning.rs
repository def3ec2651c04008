//! Fleet provisioning where it is authoritative: the claim's count, the Thing made with the
//! claim's label, and the device's certificate signed by the tenant's CA from its own PKCS#10
//! request (its key never leaves it).
//!
//! [`sign_device_csr`] is shared by both sources: the Kubernetes one here
//! ([`KubeProvisioner`], asked by dataplanes over PolicySync) and the manifest directory of
//! `fleetward start`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fleetward_crds as crds;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rcgen::{
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// Days a provisioned certificate is valid when the claim does not say.
pub const DEFAULT_CERTIFICATE_DAYS: u32 = 365;

/// A device's request, as the dataplane checked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The tenant.
    pub tenant: String,
    /// The claim.
    pub claim: String,
    /// The thing name asked for.
    pub thing: String,
    /// The device's PKCS#10 request, PEM.
    pub csr_pem: String,
}

/// What a device gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// Its certificate, PEM.
    pub certificate_pem: String,
    /// The signing CA's certificate (and its chain, if the Secret holds one), PEM.
    pub ca_pem: String,
}

/// Why a request was not provisioned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A Thing of that name exists.
    #[error("a thing named {0} exists already")]
    Exists(String),
    /// The claim made as many Things as it may.
    #[error("the claim has made the {0} things it may")]
    LimitReached(u32),
    /// The claim is unknown, disabled or unusable (its Secrets).
    #[error("{0}")]
    Claim(String),
    /// The signing request does not read, or its name does not match.
    #[error("{0}")]
    BadRequest(String),
    /// The API server failed; retry.
    #[error("{0}")]
    Unavailable(String),
}

/// Makes Things for provisioning requests.
pub trait Provisioner: Send + Sync + 'static {
    /// Checks the claim's count, signs the request, and creates the Thing.
    fn provision(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Signed, Failure>> + Send + '_>>;
}

/// Signs a device's PKCS#10 request (PEM) with the CA in `ca_cert_pem` and `ca_key_pem`: the
/// subject becomes CN=`thing` with the URI SAN `fleetward://<tenant>/<thing>` and client-auth
/// usage, whatever the request asked; its key (proved by the request's signature) is kept.
pub fn sign_device_csr(
    csr_pem: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    tenant: &str,
    thing: &str,
    days: u32,
) -> Result<String, Failure> {
    let csr = read_csr(csr_pem, thing)?;
    let key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| Failure::Claim(format!("the signing Secret's tls.key does not read: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)
        .map_err(|e| Failure::Claim(format!("the signing Secret's tls.crt does not read: {e}")))?;
    sign_with(csr, &issuer, tenant, thing, days)
}

/// Reads a device's PKCS#10 request (PEM), checking its signature by its own key.
pub fn read_csr(csr_pem: &str, thing: &str) -> Result<CertificateSigningRequestParams, Failure> {
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        Failure::BadRequest(format!(
            "the csr is not a PEM PKCS#10 request signed by its own key ({e}); make one with \
             `openssl req -new -key device.key -subj /CN={thing}`"
        ))
    })
}

/// [`sign_device_csr`] with a CA already read.
pub fn sign_with(
    mut request: CertificateSigningRequestParams,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    tenant: &str,
    thing: &str,
    days: u32,
) -> Result<String, Failure> {
    let params = &mut request.params;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, thing);
    params.subject_alt_names = vec![SanType::URI(
        format!("fleetward://{tenant}/{thing}")
            .try_into()
            .map_err(|_| Failure::BadRequest(format!("{thing:?} is not a usable name")))?,
    )];
    // Nothing the request asked for beyond its key: no CA, no name constraints, no
    // extensions of its own.
    params.is_ca = IsCa::ExplicitNoCa;
    params.name_constraints = None;
    params.crl_distribution_points = Vec::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions.clear();
    let now = time_now();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let cert = request
        .signed_by(issuer)
        .map_err(|e| Failure::BadRequest(format!("the request cannot be signed: {e}")))?;
    Ok(cert.pem())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// 16 random bytes, the first kept below 0x80 so the serial is positive.
fn random_serial() -> Result<[u8; 16], Failure> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial)
        .map_err(|e| Failure::Unavailable(format!("no randomness for a serial: {e}")))?;
    serial[0] &= 0x7f;
    Ok(serial)
}

pub use fleetward_policy::provisioning::name_allowed;

/// The claim of a tenant, or why it cannot be used.
pub fn claim_of<'a>(
    spec: &'a crds::TenantSpec,
    name: &str,
) -> Result<&'a crds::ProvisioningClaim, Failure> {
    let claim = spec
        .provisioning
        .iter()
        .flat_map(|p| &p.claims)
        .find(|c| c.name == name)
        .ok_or_else(|| Failure::Claim(format!("the tenant has no provisioning claim {name}")))?;
    if claim.disabled {
        return Err(Failure::Claim(format!("claim {name} is disabled")));
    }
    Ok(claim)
}

/// The Thing a claim makes: its label, certificates only, the claim's attributes.
pub fn provisioned_thing(
    claim: &crds::ProvisioningClaim,
    namespace: &str,
    thing: &str,
) -> crds::Thing {
    let mut t = crds::Thing::new(
        thing,
        crds::ThingSpec {
            credentials: Some(crds::ThingCredentials {
                mode: Some(crds::CredentialMode::Certificate),
                x509: Some(crds::ThingX509::default()),
                ..Default::default()
            }),
            attributes: claim.attributes.clone(),
            ..Default::default()
        },
    );
    t.metadata = ObjectMeta {
        name: Some(thing.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            crds::PROVISIONING_CLAIM_LABEL.to_owned(),
            claim.name.clone(),
        )])),
        ..ObjectMeta::default()
    };
    t
}

/// The Kubernetes provisioner: reads the Tenant and Secrets from the API server at request
/// time, counts the claim's Things there, and creates the Thing. Requests are taken one at a
/// time on each operator replica, so a claim's count holds on one replica; two replicas
/// answering at once may each make the last one.
pub struct KubeProvisioner {
    client: kube::Client,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl KubeProvisioner {
    /// A provisioner over `client`.
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    async fn run(&self, r: Request) -> Result<Signed, Failure> {
        let _one = self.one_at_a_time.lock().await;
        let unavailable = |e: kube::Error| Failure::Unavailable(format!("the API server: {e}"));
        let tenants: Api<crds::Tenant> = Api::all(self.client.clone());
        let tenant = tenants
            .get_opt(&r.tenant)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Failure::Claim(format!("no Tenant {}", r.tenant)))?;
        let namespace = tenant.namespace().to_owned();
        let claim = claim_of(&tenant.spec, &r.claim)?;
        if !name_allowed(&claim.name_pattern, &r.thing) {
            return Err(Failure::BadRequest(format!(
                "{:?} does not match the claim's pattern {:?}",
                r.thing, claim.name_pattern
            )));
        }
        let things: Api<crds::Thing> = Api::namespaced(self.client.clone(), &namespace);
        let selector = format!("{}={}", crds::PROVISIONING_CLAIM_LABEL, claim.name);
        let made = things
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(unavailable)?;
        if made.items.len() >= claim.max_things as usize {
            return Err(Failure::LimitReached(claim.max_things));
        }
        if things
            .get_opt(&r.thing)
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(Failure::Exists(r.thing));
        }
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &namespace);
        let signing = secrets
            .get_opt(&claim.signing_secret_name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Failure::Claim(format!(
                    "the claim's signingSecretName {}/{} does not exist",
                    namespace, claim.signing_secret_name
                ))
            })?;
        let entry = |key: &str| {
            signing
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let (Some(ca_cert), Some(ca_key)) = (entry("tls.crt"), entry("tls.key")) else {
            return Err(Failure::Claim(format!(
                "Secret {namespace}/{} needs tls.crt and tls.key (the signing CA)",
                claim.signing_secret_name
            )));
        };
        let days = claim.certificate_days.unwrap_or(DEFAULT_CERTIFICATE_DAYS);
        let certificate_pem =
            sign_device_csr(&r.csr_pem, &ca_cert, &ca_key, &r.tenant, &r.thing, days)?;
        let thing = provisioned_thing(claim, &namespace, &r.thing);
        match things.create(&PostParams::default(), &thing).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Err(Failure::Exists(r.thing)),
            Err(e) => return Err(unavailable(e)),
        }
        let ca_pem = entry("ca.crt").map_or(ca_cert.clone(), |chain| format!("{ca_cert}{chain}"));
        Ok(Signed {
            certificate_pem,
            ca_pem,
        })
    }
}

impl Provisioner for KubeProvisioner {
    fn provision(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Signed, Failure>> + Send + '_>> {
        Box::pin(self.run(request))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer};
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

    use super::*;

    #[test]
    fn a_signed_request_names_the_thing_whatever_it_asked() {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "acme devices");
        let ca_key = KeyPair::generate().expect("key");
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        // A device asking to be a CA for another name.
        let mut ask = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        ask.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ask.distinguished_name.push(DnType::CommonName, "root");
        let device = KeyPair::generate().expect("key");
        let csr = ask
            .serialize_request(&device)
            .expect("a CSR")
            .pem()
            .expect("PEM");

        let pem = sign_device_csr(&csr, &ca.pem(), &ca_key_pem, "acme", "sensor-0001", 30)
            .expect("signed");
        let der = fleetward_policy::certificates::pem_certificates(pem.as_bytes())
            .expect("a certificate")
            .remove(0);
        let (_, cert) = X509Certificate::from_der(&der).expect("parses");
        assert!(!cert.is_ca());
        let cn = cert.subject().iter_common_name().next().expect("a CN");
        assert_eq!(cn.as_str().expect("text"), "sensor-0001");
        let names: Vec<String> = cert
            .subject_alternative_name()
            .expect("reads")
            .expect("a SAN")
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => (*u).to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["fleetward://acme/sensor-0001"]);
        assert_eq!(
            cert.public_key().subject_public_key.data,
            device.public_key_raw()
        );
        // Its key is the device's; a request that does not read is refused as such.
        assert!(matches!(
            sign_device_csr("garbage", &ca.pem(), &ca_key_pem, "acme", "x", 1),
            Err(Failure::BadRequest(_))
        ));
        assert!(name_allowed("sensor-[0-9]{4}", "sensor-0001"));
        assert!(!name_allowed("sensor-[0-9]{4}", "sensor-00012"));
        assert!(!name_allowed("sensor-[0-9]{4}", "xsensor-0001"));
    }
}
