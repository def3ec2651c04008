//! A tenant's provisioning claims as the snapshot carries them: the SHA-256 of each claim
//! certificate in the claim's Secret, and how many Things carry the claim's label.

use fleetward_policy as policy;
use sha2::{Digest as _, Sha256};

use super::input;
use super::readiness::ClaimFacts;
use super::resolve::Namespace;

/// The claims of `tenant`, resolved against the namespace's Secrets and Things. A claim whose
/// certificate Secret is missing or holds no certificate accepts no certificate (it is still
/// listed, with its count), and its status says why.
pub(crate) fn resolve(
    tenant: &input::Tenant,
    objects: &Namespace,
    provisioned: &dyn Fn(&str) -> u32,
) -> (Vec<policy::ProvisioningClaim>, Vec<ClaimFacts>) {
    (tenant.claims.iter())
        .map(|claim| {
            let provisioned = provisioned(&claim.name);
            let (certificates, problem) = certificates(objects, claim);
            let problem = problem.or_else(|| {
                let signing = objects.secrets.get(&claim.signing_secret_name);
                let ready = signing.is_some_and(|s| {
                    s.entries.contains_key("tls.crt") && s.entries.contains_key("tls.key")
                });
                (!ready).then(|| {
                    format!(
                        "signingSecretName {} needs tls.crt and tls.key (the CA that signs \
                         devices' certificates)",
                        claim.signing_secret_name
                    )
                })
            });
            let message = problem.or_else(|| {
                (provisioned >= claim.max_things)
                    .then(|| format!("the claim has made its {} things", claim.max_things))
            });
            let status = ClaimFacts {
                name: claim.name.clone(),
                provisioned,
                message,
            };
            let served = policy::ProvisioningClaim {
                name: claim.name.clone(),
                certificates,
                name_pattern: claim.name_pattern.clone(),
                max_things: claim.max_things,
                provisioned,
                disabled: claim.disabled,
            };
            (served, status)
        })
        .unzip()
}

/// How many Things of a namespace `claim` provisioned, counted over every Thing.
pub(crate) fn count_provisioned(objects: &Namespace, claim: &str) -> u32 {
    let n = objects
        .things
        .values()
        .filter(|t| t.claim.as_deref() == Some(claim))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The SHA-256 of each certificate in the claim's Secret (`tls.crt`), or why there are none.
fn certificates(
    objects: &Namespace,
    claim: &input::ProvisioningClaim,
) -> (Vec<[u8; 32]>, Option<String>) {
    let name = &claim.certificate_secret_name;
    let Some(pem) = objects
        .secrets
        .get(name)
        .and_then(|s| s.entries.get("tls.crt"))
    else {
        return (
            Vec::new(),
            Some(format!(
                "certificateSecretName {name} does not exist or has no tls.crt; create it \
                 with the claim certificate devices present"
            )),
        );
    };
    match policy::certificates::pem_certificates(pem) {
        Ok(ders) => (
            ders.iter().map(|d| Sha256::digest(d).into()).collect(),
            None,
        ),
        Err(e) => (
            Vec::new(),
            Some(format!("certificateSecretName {name}'s tls.crt {e}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SecretData;

    fn secret(name: &str, entries: &[(&str, &str)]) -> SecretData {
        SecretData {
            namespace: "acme".into(),
            name: name.into(),
            entries: entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn claim(name: &str, max_things: u32) -> input::ProvisioningClaim {
        input::ProvisioningClaim {
            name: name.into(),
            certificate_secret_name: "claim-cert".into(),
            signing_secret_name: "signing".into(),
            name_pattern: "sensor-[0-9]+".into(),
            max_things,
            ..Default::default()
        }
    }

    fn labelled(name: &str, claim: &str) -> input::Thing {
        input::Thing {
            meta: input::Meta {
                name: name.into(),
                namespace: "acme".into(),
                ..Default::default()
            },
            claim: Some(claim.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_carries_its_certificates_digests_and_its_count() {
        let cert =
            rcgen::generate_simple_self_signed(vec!["claim".to_owned()]).expect("a certificate");
        let pem = cert.cert.pem();
        let tenant = input::Tenant {
            claims: vec![claim("line-1", 2), claim("line-2", 5)],
            ..Default::default()
        };
        let mut ns = Namespace::default();
        for t in [
            labelled("sensor-1", "line-1"),
            labelled("sensor-2", "line-1"),
        ] {
            ns.things.insert(t.meta.name.clone(), t);
        }
        ns.things
            .insert("other".into(), labelled("other", "line-2"));
        // No Secrets yet: listed, accepting no certificate, and the status says why.
        let (served, status) = resolve(&tenant, &ns, &|c| count_provisioned(&ns, c));
        assert!(served.iter().all(|c| c.certificates.is_empty()));
        let why = status[0].message.as_deref().unwrap_or_default();
        assert!(why.contains("certificateSecretName claim-cert"), "{why}");
        ns.secrets.insert(
            "claim-cert".into(),
            secret("claim-cert", &[("tls.crt", &pem)]),
        );
        ns.secrets.insert(
            "signing".into(),
            secret("signing", &[("tls.crt", "x"), ("tls.key", "y")]),
        );
        let (served, status) = resolve(&tenant, &ns, &|c| count_provisioned(&ns, c));
        let digest: [u8; 32] = Sha256::digest(cert.cert.der()).into();
        assert_eq!(served[0].certificates, vec![digest]);
        assert_eq!((served[0].provisioned, served[1].provisioned), (2, 1));
        assert!(!served[0].has_room() && served[1].has_room());
        assert_eq!(
            status[0].message.as_deref(),
            Some("the claim has made its 2 things")
        );
        assert_eq!(status[1].message, None);
    }
}
