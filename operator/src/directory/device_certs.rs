//! Device certificates in the single-binary mode: the local development CA of each tenant with
//! a `deviceCA` stands where a cluster has a CA Secret or cert-manager.
//!
//! - A tenant's CA Secret (`deviceCA.secretName`, or `<issuer>-ca` for an `issuerRef`) that no
//!   manifest declares is fed to the index with `ca.crt` = `<state-dir>/ca/<tenant>/ca.crt`,
//!   read again on every scan, so an edited bundle (a rotation) is served without a restart.
//! - A thing with `x509.issue: true` of such a tenant gets a certificate from that CA in
//!   `<state-dir>/certs/<tenant>/<thing>.crt|.key`, fed as its TLS Secret (`tls.crt`,
//!   `tls.key`, `ca.crt`) unless a manifest declares that Secret, and renewed once two thirds
//!   of its lifetime have passed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetward_crds::{Tenant, Thing};

use super::local_ca::{CA_CERT_FILE, CA_KEY_FILE, CertFacts, LocalCa, tenant_ca_dir};
use super::{FileError, ScanReport};
use crate::index::{Index, Kind, ObjectKey, SecretData};
use crate::resource::Resource;

/// The lifetime of a certificate issued for a thing with `x509.issue`, as cert-manager's
/// default.
pub const ISSUED_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The CA Secret a tenant's `deviceCA` names: `secretName`, else `<issuer>-ca` (in this mode
/// the local CA plays the issuer, and its CA is served under that name).
pub fn ca_secret_name(tenant: &Tenant) -> Option<String> {
    let ca = tenant.spec.device_ca.as_ref()?;
    ca.secret_name
        .clone()
        .or_else(|| ca.issuer_ref.as_ref().map(|i| format!("{}-ca", i.name)))
}

/// Gives a Tenant whose `deviceCA` has an `issuerRef` and no `secretName` the secret name
/// `<issuer>-ca`, where this mode serves the local CA: the index then trusts it as it trusts
/// any CA Secret.
pub fn trust_issuer_locally(object: &mut Resource) {
    let Resource::Tenant(tenant) = object else {
        return;
    };
    let name = ca_secret_name(tenant);
    if let Some(ca) = tenant.spec.device_ca.as_mut()
        && ca.secret_name.is_none()
    {
        ca.secret_name = name;
    }
}

/// A tenant's CA as last read, with the bytes it was read from.
struct ReadCa {
    files: (Vec<u8>, Vec<u8>),
    ca: LocalCa,
}

/// A thing certificate fed to the index.
struct Fed {
    /// What it was issued for: the tenant, the thing and the common name.
    identity: (String, String, String),
    /// The CA bundle it was fed with.
    bundle: Vec<u8>,
    renew_at: u64,
}

/// The CA and thing-certificate Secrets this mode feeds to the index.
pub(super) struct DeviceCerts {
    state_dir: PathBuf,
    cas: BTreeMap<String, ReadCa>,
    /// Every Secret fed (CAs and things), by key, as fed.
    fed: BTreeMap<ObjectKey, SecretData>,
    /// Thing TLS Secrets fed, by key: what renewal needs.
    fed_things: BTreeMap<ObjectKey, Fed>,
}

impl std::fmt::Debug for DeviceCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCerts")
            .field("state_dir", &self.state_dir)
            .field("fed", &self.fed.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DeviceCerts {
    pub(super) fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            cas: BTreeMap::new(),
            fed: BTreeMap::new(),
            fed_things: BTreeMap::new(),
        }
    }

    /// Where the certificate of thing `thing` of tenant `tenant` is kept.
    pub fn thing_cert_dir(state_dir: &Path, tenant: &str) -> PathBuf {
        state_dir.join("certs").join(tenant)
    }

    /// Feeds the CA Secrets of the declared tenants and the TLS Secrets of their things with
    /// `x509.issue`, and removes those no longer wanted.
    pub(super) fn feed<'a>(
        &mut self,
        declared: impl Iterator<Item = &'a Resource> + Clone,
        index: &mut Index,
        report: &mut ScanReport,
    ) {
        let declared_secrets: BTreeSet<ObjectKey> = declared
            .clone()
            .filter_map(Resource::key)
            .filter(|k| k.kind == Kind::Secret)
            .collect();
        let mut wanted = BTreeSet::new();
        // Namespace → tenant name, for tenants whose trust is the local CA.
        let mut local = BTreeMap::new();
        for tenant in declared.clone().filter_map(|o| match o {
            Resource::Tenant(t) => Some(t),
            _ => None,
        }) {
            let (Some(name), Some(secret)) = (tenant.metadata.name.clone(), ca_secret_name(tenant))
            else {
                continue;
            };
            let key = ObjectKey::namespaced(Kind::Secret, tenant.namespace(), secret);
            if declared_secrets.contains(&key) {
                // Brought its own CA: nothing to issue with here.
                continue;
            }
            let Some(bundle) = self.read_ca(&name, report).map(|ca| ca.bundle().to_vec()) else {
                continue;
            };
            self.put(index, &key, [("ca.crt", bundle)]);
            wanted.insert(key);
            local.insert(tenant.namespace().to_owned(), name);
        }
        for thing in declared.filter_map(|o| match o {
            Resource::Thing(t) => Some(t),
            _ => None,
        }) {
            let issue = thing
                .spec
                .credentials
                .as_ref()
                .and_then(|c| c.x509.as_ref())
                .is_some_and(|x| x.issue);
            let ns = thing.metadata.namespace.as_deref().unwrap_or_default();
            let Some(tenant) = local.get(ns).cloned().filter(|_| issue) else {
                continue;
            };
            let key = ObjectKey::namespaced(Kind::Secret, ns, thing.tls_secret_name());
            if declared_secrets.contains(&key) {
                continue;
            }
            if self.feed_thing(&tenant, thing, &key, index, report) {
                wanted.insert(key);
            }
        }
        self.forget_unwanted(&wanted, &declared_secrets, index);
    }

    /// Drops what was fed and is no longer wanted; a Secret a manifest now declares stays.
    fn forget_unwanted(
        &mut self,
        wanted: &BTreeSet<ObjectKey>,
        declared: &BTreeSet<ObjectKey>,
        index: &mut Index,
    ) {
        let stale: Vec<ObjectKey> = self
            .fed
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            self.fed.remove(&key);
            self.fed_things.remove(&key);
            if !declared.contains(&key) {
                index.delete(&key);
            }
        }
    }

    /// The Secret fed under `key`, if any.
    pub(super) fn fed(&self, key: &ObjectKey) -> Option<&SecretData> {
        self.fed.get(key)
    }

    /// Feeds a Secret; the index ignores one that did not change.
    fn put<const N: usize>(
        &mut self,
        index: &mut Index,
        key: &ObjectKey,
        entries: [(&str, Vec<u8>); N],
    ) {
        let secret = SecretData {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        index.apply(Resource::Secret(secret.clone()));
        self.fed.insert(key.clone(), secret);
    }

    /// The tenant's CA, created on first use and read again when its files changed.
    fn read_ca(&mut self, tenant: &str, report: &mut ScanReport) -> Option<&LocalCa> {
        let dir = tenant_ca_dir(&self.state_dir, tenant);
        let files = (
            fs::read(dir.join(CA_CERT_FILE)).unwrap_or_default(),
            fs::read(dir.join(CA_KEY_FILE)).unwrap_or_default(),
        );
        if self.cas.get(tenant).is_some_and(|c| c.files == files) {
            return self.cas.get(tenant).map(|c| &c.ca);
        }
        let read = if files.0.is_empty() && files.1.is_empty() {
            LocalCa::tenant(&self.state_dir, tenant).map(|(ca, created)| {
                if created {
                    tracing::info!(
                        tenant,
                        ca = %ca.cert_path().display(),
                        "created the tenant's development device CA"
                    );
                }
                ca
            })
        } else {
            let key = String::from_utf8_lossy(&files.1);
            LocalCa::from_pem(&dir, files.0.clone(), &key)
        };
        match read {
            Ok(ca) => {
                // Keyed by the bytes as read now: a CA just created is read back next scan once.
                let files = (ca.bundle().to_vec(), files.1);
                self.cas.insert(tenant.to_owned(), ReadCa { files, ca });
            }
            Err(e) => {
                // The last good CA stays served while the files are broken.
                report.errors.push(FileError {
                    file: dir.clone(),
                    message: format!(
                        "tenant {tenant}'s device CA: {e}; the last good CA stays in use"
                    ),
                });
            }
        }
        self.cas.get(tenant).map(|c| &c.ca)
    }

    /// Feeds a thing's certificate, issuing or renewing it when needed; `false` when it
    /// could not be.
    fn feed_thing(
        &mut self,
        tenant: &str,
        thing: &Thing,
        key: &ObjectKey,
        index: &mut Index,
        report: &mut ScanReport,
    ) -> bool {
        let Some(ca) = self.cas.get(tenant).map(|c| &c.ca) else {
            return false;
        };
        let name = thing.metadata.name.clone().unwrap_or_default();
        let common_name = thing
            .spec
            .credentials
            .as_ref()
            .and_then(|c| c.x509.as_ref())
            .and_then(|x| x.subject.as_ref())
            .and_then(|s| s.common_name.clone())
            .unwrap_or_else(|| name.clone());
        let identity = (tenant.to_owned(), name.clone(), common_name.clone());
        let now = super::local_ca::unix_now();
        if self
            .fed_things
            .get(key)
            .is_some_and(|f| f.identity == identity && f.bundle == ca.bundle() && now < f.renew_at)
        {
            return true;
        }
        let dir = Self::thing_cert_dir(&self.state_dir, tenant);
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let on_disk = fs::read(&cert_path).ok().zip(fs::read(&key_path).ok());
        let usable = on_disk.filter(|(cert, _)| {
            CertFacts::read_pem(cert).is_some_and(|f| {
                f.thing
                    .as_ref()
                    .is_some_and(|(t, n)| *t == identity.0 && *n == identity.1)
                    && f.common_name.as_deref() == Some(common_name.as_str())
                    && now < f.renew_at()
            }) && ca.signed(cert)
        });
        let (cert, private_key) = match usable {
            Some(pair) => pair,
            None => match ca
                .issue_thing(tenant, &name, &common_name, ISSUED_LIFETIME)
                .and_then(|issued| issued.write(&dir, &name).map(|_| issued))
            {
                Ok(issued) => {
                    tracing::info!(
                        thing = %format!("{tenant}/{name}"),
                        serial = %issued.facts.serial,
                        cert = %cert_path.display(),
                        "issued the thing's certificate from the tenant's development CA"
                    );
                    (issued.cert_pem.into_bytes(), issued.key_pem.into_bytes())
                }
                Err(e) => {
                    report.errors.push(FileError {
                        file: cert_path,
                        message: format!("cannot issue thing {tenant}/{name}'s certificate: {e}"),
                    });
                    return false;
                }
            },
        };
        let renew_at = CertFacts::read_pem(&cert).map_or(0, |f| f.renew_at());
        let bundle = ca.bundle().to_vec();
        self.put(
            index,
            key,
            [
                ("tls.crt", cert),
                ("tls.key", private_key),
                ("ca.crt", bundle.clone()),
            ],
        );
        self.fed_things.insert(
            key.clone(),
            Fed {
                identity,
                bundle,
                renew_at,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::Directory;
    use super::super::local_ca::{CA_CERT_FILE, CA_KEY_FILE, CertFacts, LocalCa, tenant_ca_dir};
    use super::*;

    const TENANT: &str = "apiVersion: fleetward.io/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
        spec: {deviceCA: {secretName: acme-device-ca}}\n";
    const THING: &str = "apiVersion: fleetward.io/v1alpha1\nkind: Thing\n\
        metadata: {name: meter-1, namespace: acme}\nspec: {credentials: {x509: {issue: true}}}\n";

    fn secret(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::namespaced(Kind::Secret, ns, name)
    }

    fn entry<'a>(dir: &'a Directory, key: &ObjectKey, entry: &str) -> &'a [u8] {
        dir.fed_secret(key)
            .and_then(|s| s.entries.get(entry))
            .map_or(&[], Vec::as_slice)
    }

    fn serial(dir: &Directory) -> String {
        let cert = entry(dir, &secret("acme", "meter-1-tls"), "tls.crt");
        CertFacts::read_pem(cert)
            .map(|f| f.serial)
            .unwrap_or_default()
    }

    /// A manifest directory with `docs` and a state directory beside it.
    fn setup(docs: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let manifests = root.path().join("manifests");
        fs::create_dir_all(&manifests).expect("dir");
        fs::write(manifests.join("acme.yaml"), docs.join("---\n")).expect("write");
        let state = root.path().join("state");
        (root, manifests, state)
    }

    #[test]
    fn the_tenants_ca_and_an_issued_thing_certificate_are_fed_from_the_state_directory() {
        let (_root, manifests, state) = setup(&[TENANT, THING]);
        let mut dir = Directory::new(&manifests, &state).expect("open");
        let mut index = Index::new();
        let report = dir.scan(&mut index);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let ca_file = fs::read(tenant_ca_dir(&state, "acme").join(CA_CERT_FILE)).expect("CA");
        assert_eq!(
            entry(&dir, &secret("acme", "acme-device-ca"), "ca.crt"),
            ca_file
        );
        let tls = secret("acme", "meter-1-tls");
        assert_eq!(entry(&dir, &tls, "ca.crt"), ca_file);
        let facts = CertFacts::read_pem(entry(&dir, &tls, "tls.crt")).expect("a certificate");
        assert_eq!(facts.thing, Some(("acme".into(), "meter-1".into())));
        assert_eq!(facts.common_name.as_deref(), Some("meter-1"));
        let files = DeviceCerts::thing_cert_dir(&state, "acme");
        assert_eq!(
            fs::read(files.join("meter-1.key")).expect("the key file"),
            entry(&dir, &tls, "tls.key")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(files.join("meter-1.key")), 0o600);
            assert_eq!(mode(tenant_ca_dir(&state, "acme").join(CA_KEY_FILE)), 0o600);
        }
        // A restart keeps the CA and the certificate.
        let before = serial(&dir);
        let mut again = Directory::new(&manifests, &state).expect("open");
        assert!(again.scan(&mut Index::new()).errors.is_empty());
        assert_eq!(serial(&again), before);
        // The thing gone: its Secret goes, the CA stays.
        fs::write(manifests.join("acme.yaml"), TENANT).expect("write");
        again.scan(&mut Index::new());
        assert!(again.fed_secret(&tls).is_none());
        assert!(
            again
                .fed_secret(&secret("acme", "acme-device-ca"))
                .is_some()
        );
    }

    #[test]
    fn an_issuer_ref_is_served_as_the_secret_issuer_ca_and_a_declared_ca_secret_wins() {
        let tenant = "apiVersion: fleetward.io/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
            spec: {deviceCA: {issuerRef: {name: devices}}}\n";
        let (_root, manifests, state) = setup(&[tenant, THING]);
        let mut dir = Directory::new(&manifests, &state).expect("open");
        let mut index = Index::new();
        assert!(dir.scan(&mut index).errors.is_empty());
        assert!(dir.fed_secret(&secret("acme", "devices-ca")).is_some());
        let trusted = dir.declared().find_map(|o| match o {
            Resource::Tenant(t) => t.spec.device_ca.as_ref()?.secret_name.clone(),
            _ => None,
        });
        assert_eq!(trusted.as_deref(), Some("devices-ca"));
        assert!(dir.fed_secret(&secret("acme", "meter-1-tls")).is_some());

        // The user's own CA Secret: nothing local is served or issued.
        let byo = "apiVersion: v1\nkind: Secret\nmetadata: {name: devices-ca, namespace: acme}\n\
            stringData: {ca.crt: x}\n";
        fs::write(
            manifests.join("acme.yaml"),
            [tenant, THING, byo].join("---\n"),
        )
        .expect("write");
        dir.scan(&mut index);
        assert!(dir.fed_secret(&secret("acme", "devices-ca")).is_none());
        assert!(dir.fed_secret(&secret("acme", "meter-1-tls")).is_none());
    }

    #[test]
    fn a_rotated_bundle_is_served_on_the_next_scan_and_what_the_old_ca_signed_is_renewed_once_dropped()
     {
        let (root, manifests, state) = setup(&[TENANT, THING]);
        let mut dir = Directory::new(&manifests, &state).expect("open");
        let mut index = Index::new();
        dir.scan(&mut index);
        let first = serial(&dir);
        let ca_dir = tenant_ca_dir(&state, "acme");
        let old = fs::read(ca_dir.join(CA_CERT_FILE)).expect("old CA");
        // A new CA (a new key) beside the old one in the bundle.
        let (new, _) = LocalCa::open_or_create(&root.path().join("new"), "new").expect("new CA");
        let new_key = fs::read(root.path().join("new").join(CA_KEY_FILE)).expect("key");
        let both = [old.clone(), new.bundle().to_vec()].concat();
        fs::write(ca_dir.join(CA_CERT_FILE), &both).expect("write");
        fs::write(ca_dir.join(CA_KEY_FILE), &new_key).expect("write");
        assert!(dir.scan(&mut index).errors.is_empty());
        assert_eq!(
            entry(&dir, &secret("acme", "acme-device-ca"), "ca.crt"),
            both
        );
        assert_eq!(entry(&dir, &secret("acme", "meter-1-tls"), "ca.crt"), both);
        assert_eq!(
            serial(&dir),
            first,
            "still signed by a CA of the bundle: kept"
        );
        // The old CA dropped: its certificate is replaced by one of the new CA.
        fs::write(ca_dir.join(CA_CERT_FILE), new.bundle()).expect("write");
        assert!(dir.scan(&mut index).errors.is_empty());
        assert_ne!(serial(&dir), first);
        let (now_ca, _) = LocalCa::tenant(&state, "acme").expect("CA");
        assert!(now_ca.signed(entry(&dir, &secret("acme", "meter-1-tls"), "tls.crt")));
        // A broken bundle is reported and the last good one stays served.
        fs::write(ca_dir.join(CA_CERT_FILE), "not a certificate").expect("write");
        let errors = dir.scan(&mut index).errors;
        assert!(
            errors.len() == 1 && errors[0].message.contains("the last good CA stays in use"),
            "{errors:?}"
        );
        assert_eq!(
            entry(&dir, &secret("acme", "acme-device-ca"), "ca.crt"),
            new.bundle()
        );
    }

    #[test]
    fn a_certificate_past_two_thirds_of_its_lifetime_is_renewed_and_a_younger_one_kept() {
        let (_root, manifests, state) = setup(&[TENANT, THING]);
        let (ca, _) = LocalCa::tenant(&state, "acme").expect("CA");
        let files = DeviceCerts::thing_cert_dir(&state, "acme");
        // Three days long, two gone: due.
        let old = ca
            .issue_thing_between("acme", "meter-1", "meter-1", -2 * 86_400, 86_400)
            .expect("a leaf");
        old.write(&files, "meter-1").expect("write");
        let mut dir = Directory::new(&manifests, &state).expect("open");
        assert!(dir.scan(&mut Index::new()).errors.is_empty());
        assert_ne!(serial(&dir), old.facts.serial, "renewed");
        // Three days long, one gone: kept.
        let young = ca
            .issue_thing_between("acme", "meter-1", "meter-1", -86_400, 2 * 86_400)
            .expect("a leaf");
        young.write(&files, "meter-1").expect("write");
        let mut dir = Directory::new(&manifests, &state).expect("open");
        assert!(dir.scan(&mut Index::new()).errors.is_empty());
        assert_eq!(serial(&dir), young.facts.serial, "kept");
    }
}
