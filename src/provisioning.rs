//! Fleet provisioning in `fleetward start`: a Thing made for a device becomes a manifest in
//! `<manifests>/provisioned/`, picked up by the next rescan, and the device's certificate is
//! signed by the tenant's development CA in `<state-dir>/ca/<tenant>/` (the CA the directory
//! serves as the tenant's `deviceCA`; a claim's `signingSecretName` is read in a cluster only).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use fleetward_crds as crds;
use fleetward_dataplane::provisioning::{
    ProvisionError, ProvisionRequest, Provisioned, Provisioner,
};
use fleetward_operator::directory::local_ca::LocalCa;
use fleetward_operator::provisioning::{self as op, DEFAULT_CERTIFICATE_DAYS};
use fleetward_policy::Snapshot;
use tokio::sync::watch;

/// The directory under the manifests that provisioned Things are written to.
pub const PROVISIONED_DIR: &str = "provisioned";

/// Each tenant's namespace, as the index resolved it: where a provisioned Thing goes.
pub type Namespaces = Arc<RwLock<HashMap<String, String>>>;

/// Makes Things as manifests; one request at a time.
pub struct LocalProvisioner {
    manifests: PathBuf,
    state_dir: PathBuf,
    namespaces: Namespaces,
    policy: watch::Receiver<Arc<Snapshot>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LocalProvisioner {
    /// A provisioner writing under `manifests`, signing with the CAs under `state_dir`.
    pub fn new(
        manifests: &Path,
        state_dir: &Path,
        namespaces: Namespaces,
        policy: watch::Receiver<Arc<Snapshot>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            manifests: manifests.to_owned(),
            state_dir: state_dir.to_owned(),
            namespaces,
            policy,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    async fn run(&self, r: ProvisionRequest) -> Result<Provisioned, ProvisionError> {
        let _one = self.one_at_a_time.lock().await;
        let namespace = self
            .namespaces
            .read()
            .map_err(|_| ProvisionError::Unavailable("the namespace table is unusable".into()))?
            .get(&r.tenant)
            .cloned()
            .ok_or_else(|| ProvisionError::Claim(format!("no Tenant {}", r.tenant)))?;
        let dir = self.manifests.join(PROVISIONED_DIR);
        let file = dir.join(format!("{namespace}--{}.yaml", r.thing));
        let claim = {
            let snapshot = self.policy.borrow();
            if snapshot.thing(&r.tenant, &r.thing).is_some() || file.exists() {
                return Err(ProvisionError::Exists(r.thing));
            }
            snapshot
                .tenant(&r.tenant)
                .and_then(|t| t.provisioning.iter().find(|c| c.name == r.claim).cloned())
                .ok_or_else(|| ProvisionError::Claim(format!("no claim {}", r.claim)))?
        };
        // The files written are the count that cannot lag; the snapshot's counts Things the
        // manifests declare with the claim's label too.
        let written = count_written(&dir, &namespace, &r.claim);
        if written.max(claim.provisioned) >= claim.max_things {
            return Err(ProvisionError::LimitReached(format!(
                "the claim has made the {} things it may; ask the tenant's admin for room",
                claim.max_things
            )));
        }
        if !op::name_allowed(&claim.name_pattern, &r.thing) {
            return Err(ProvisionError::BadRequest(format!(
                "{:?} does not match the claim's pattern",
                r.thing
            )));
        }
        let unavailable = |e: &dyn std::fmt::Display| ProvisionError::Unavailable(e.to_string());
        let (ca, _) = LocalCa::tenant(&self.state_dir, &r.tenant).map_err(|e| unavailable(&e))?;
        let certificate_pem = ca
            .sign_device_csr(&r.csr_pem, &r.tenant, &r.thing, DEFAULT_CERTIFICATE_DAYS)
            .map_err(failure)?;
        let spec = crds::ProvisioningClaim {
            name: r.claim.clone(),
            ..Default::default()
        };
        let thing = op::provisioned_thing(&spec, &namespace, &r.thing);
        let yaml = serde_yaml::to_string(&thing).map_err(|e| unavailable(&e))?;
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&e))?;
        std::fs::write(&file, yaml).map_err(|e| unavailable(&e))?;
        tracing::info!(file = %file.display(), claim = %r.claim, "wrote a provisioned thing");
        Ok(Provisioned {
            certificate_pem,
            ca_pem: String::from_utf8_lossy(ca.bundle()).into_owned(),
        })
    }
}

/// Things of `namespace` this provisioner wrote for `claim`.
fn count_written(dir: &Path, namespace: &str, claim: &str) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!("{namespace}--");
    let mine = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_yaml::from_str::<crds::Thing>(&text).ok())
        .filter(|t| {
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crds::PROVISIONING_CLAIM_LABEL))
                .is_some_and(|c| c == claim)
        })
        .count();
    u32::try_from(mine).unwrap_or(u32::MAX)
}

fn failure(e: op::Failure) -> ProvisionError {
    match e {
        op::Failure::Exists(t) => ProvisionError::Exists(t),
        op::Failure::LimitReached(n) => {
            ProvisionError::LimitReached(format!("the claim has made the {n} things it may"))
        }
        op::Failure::Claim(m) => ProvisionError::Claim(m),
        op::Failure::BadRequest(m) => ProvisionError::BadRequest(m),
        op::Failure::Unavailable(m) => ProvisionError::Unavailable(m),
    }
}

impl Provisioner for LocalProvisioner {
    fn provision(
        &self,
        request: ProvisionRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Provisioned, ProvisionError>> + Send + '_>> {
        Box::pin(self.run(request))
    }
}
