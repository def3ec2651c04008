//! Fleet provisioning requests sent to the operator over PolicySync's `Provision` call: the
//! operator counts the claim's Things, signs the device's request and creates its Thing.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fleetward_proto::pb::ProvisionRequest as WireRequest;
use fleetward_proto::pb::policy_sync_client::PolicySyncClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::{Code, Request};

use crate::provisioning::{ProvisionError, ProvisionRequest, Provisioned, Provisioner};

/// How long one operator has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Asks the operator replicas in turn, until one answers.
pub(crate) struct GrpcProvisioner {
    pub(crate) endpoints: Vec<(String, Endpoint)>,
    pub(crate) auth: Option<MetadataValue<Ascii>>,
}

impl GrpcProvisioner {
    async fn ask(&self, request: ProvisionRequest) -> Result<Provisioned, ProvisionError> {
        let wire = WireRequest {
            tenant: request.tenant,
            claim: request.claim,
            thing: request.thing,
            csr_pem: request.csr_pem,
        };
        let mut last = String::from("no operator endpoint");
        for (url, endpoint) in &self.endpoints {
            let channel = match endpoint.connect().await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let auth = self.auth.clone();
            let mut client =
                PolicySyncClient::with_interceptor(channel, move |mut r: Request<()>| {
                    if let Some(a) = &auth {
                        r.metadata_mut().insert("authorization", a.clone());
                    }
                    Ok(r)
                });
            let mut call = Request::new(wire.clone());
            call.set_timeout(ANSWER_WITHIN);
            match client.provision(call).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    return Ok(Provisioned {
                        certificate_pem: answer.certificate_pem,
                        ca_pem: answer.ca_pem,
                    });
                }
                Err(status) => {
                    let message = status.message().to_owned();
                    match status.code() {
                        Code::AlreadyExists => return Err(ProvisionError::Exists(wire.thing)),
                        Code::ResourceExhausted => {
                            return Err(ProvisionError::LimitReached(message));
                        }
                        Code::FailedPrecondition => return Err(ProvisionError::Claim(message)),
                        Code::InvalidArgument => return Err(ProvisionError::BadRequest(message)),
                        // Another replica may answer.
                        _ => last = format!("{url}: {message}"),
                    }
                }
            }
        }
        Err(ProvisionError::Unavailable(last))
    }
}

impl Provisioner for GrpcProvisioner {
    fn provision(
        &self,
        request: ProvisionRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Provisioned, ProvisionError>> + Send + '_>> {
        Box::pin(self.ask(request))
    }
}
