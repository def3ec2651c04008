//! The PolicySync service's routes, written here rather than taken from tonic's generated
//! server, so that a full snapshot goes out as the bytes encoded once per version
//! ([`super::encoded`]) and shared by every stream. The generated server takes each message by
//! value: every stream sending a full snapshot would own a copy of the whole protobuf message
//! (21 MiB at 110k records, against 5.6 MiB of bytes), and the operator would keep one more.

use std::convert::Infallible;
use std::sync::Arc;

use fleetward_proto::pb;
use prost::Message as _;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder};

use super::PolicySyncService;
use super::encoded::EncodedSnapshot;

/// `OperatorMessage.update`'s field number.
const OPERATOR_MESSAGE_UPDATE: u32 = 1;
/// `Update.snapshot`'s field number.
const UPDATE_SNAPSHOT: u32 = 4;

const SYNC: &str = "/fleetward.policysync.v1.PolicySync/Sync";
const PROVISION: &str = "/fleetward.policysync.v1.PolicySync/Provision";
const SAVED_STATE: &str = "/fleetward.policysync.v1.PolicySync/SavedState";

/// What a session sends, an OperatorMessage carrying an update: `update` as it is, or with
/// `snapshot`, a full snapshot already encoded, as its payload.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) update: pb::Update,
    pub(crate) snapshot: Option<Arc<EncodedSnapshot>>,
}

impl Outgoing {
    /// The OperatorMessage's bytes. An update with a snapshot is written as the message
    /// carrying `Update { payload: snapshot }` would be, its snapshot field last (protobuf
    /// readers take fields in any order).
    pub(crate) fn encode(&self, buf: &mut impl BufMut) {
        let snapshot = self.snapshot.as_ref().map(|s| s.bytes.as_slice());
        let payload = snapshot.map_or(0, |bytes| {
            key_len(UPDATE_SNAPSHOT) + encoded_len_varint(bytes.len() as u64) + bytes.len()
        });
        encode_key(OPERATOR_MESSAGE_UPDATE, WireType::LengthDelimited, buf);
        encode_varint((self.update.encoded_len() + payload) as u64, buf);
        self.update
            .encode(buf)
            .expect("a gRPC encode buffer grows as needed");
        if let Some(bytes) = snapshot {
            encode_key(UPDATE_SNAPSHOT, WireType::LengthDelimited, buf);
            encode_varint(bytes.len() as u64, buf);
            buf.put_slice(bytes);
        }
    }
}

/// Reads DataplaneMessages and writes [`Outgoing`]s.
#[derive(Default)]
struct SyncCodec;

impl Codec for SyncCodec {
    type Encode = Outgoing;
    type Decode = pb::DataplaneMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = SyncDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SyncDecoder(ProstDecoder::default())
    }
}

struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf);
        Ok(())
    }
}

struct SyncDecoder(ProstDecoder<pb::DataplaneMessage>);

impl Decoder for SyncDecoder {
    type Item = pb::DataplaneMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf)
    }
}

/// The service tonic serves: Sync with [`SyncCodec`], Provision and SavedState with plain
/// protobuf.
#[derive(Clone)]
pub(crate) struct Routes {
    service: Arc<PolicySyncService>,
    max_message_size: usize,
}

impl Routes {
    pub(crate) fn new(service: PolicySyncService, max_message_size: usize) -> Self {
        Self {
            service: Arc::new(service),
            max_message_size,
        }
    }

    fn grpc<C: Codec>(&self, codec: C) -> Grpc<C> {
        let max = Some(self.max_message_size);
        Grpc::new(codec).apply_max_message_size_config(max, max)
    }
}

impl NamedService for Routes {
    const NAME: &'static str = pb::policy_sync_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for Routes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = Method(self.service.clone());
        match req.uri().path() {
            SYNC => {
                let mut grpc = self.grpc(SyncCodec);
                Box::pin(async move { Ok(grpc.streaming(method, req).await) })
            }
            PROVISION => {
                let mut grpc = self.grpc(ProstCodec::default());
                Box::pin(async move { Ok(grpc.unary(method, req).await) })
            }
            SAVED_STATE => {
                let mut grpc = self.grpc(ProstCodec::default());
                Box::pin(async move { Ok(grpc.server_streaming(method, req).await) })
            }
            _ => Box::pin(async {
                Ok(
                    Status::unimplemented("PolicySync has Sync, Provision and SavedState only")
                        .into_http(),
                )
            }),
        }
    }
}

/// One call of a route.
struct Method(Arc<PolicySyncService>);

impl StreamingService<pb::DataplaneMessage> for Method {
    type Response = Outgoing;
    type ResponseStream = super::UpdateStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::DataplaneMessage>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.sync(request).await })
    }
}

impl UnaryService<pb::ProvisionRequest> for Method {
    type Response = pb::ProvisionResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<pb::ProvisionRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.provision(request).await })
    }
}

impl ServerStreamingService<pb::SavedStateRequest> for Method {
    type Response = pb::StateChunk;
    type ResponseStream = super::StateStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, _: Request<pb::SavedStateRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.saved_state().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> pb::Update {
        pb::Update {
            version: 7,
            nonce: 3,
            from_version: 5,
            payload: None,
            lineage: "0123456789abcdef".to_owned(),
        }
    }

    #[test]
    fn an_encoded_snapshot_goes_out_as_the_message_carrying_it() {
        let snapshot = pb::FullSnapshot {
            version: 7,
            grants: vec![pb::Grant {
                tenant: "acme".to_owned(),
                name: "grant".to_owned(),
                channel: "telemetry".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let encoded = Arc::new(EncodedSnapshot::new(&snapshot));
        let mut wire = Vec::new();
        let outgoing = Outgoing {
            update: update(),
            snapshot: Some(encoded.clone()),
        };
        outgoing.encode(&mut wire);
        let mut whole = update();
        whole.payload = Some(pb::update::Payload::Snapshot(snapshot));
        let expected = pb::OperatorMessage {
            message: Some(pb::operator_message::Message::Update(whole.clone())),
        };
        let decoded = pb::OperatorMessage::decode(wire.as_slice()).expect("a message");
        assert_eq!(decoded, expected);
        assert_eq!(wire.len(), expected.encoded_len());
        whole.payload = None;
        assert_eq!(
            wire.len(),
            super::super::session::full_wire_len(&whole, encoded.bytes.len()),
            "the size check before sending predicts these bytes"
        );
    }

    #[test]
    fn an_update_without_a_snapshot_goes_out_as_prost_writes_it() {
        let mut deltas = update();
        deltas.payload = Some(pb::update::Payload::Deltas(pb::DeltaBatch::default()));
        for update in [update(), deltas] {
            let message = pb::OperatorMessage {
                message: Some(pb::operator_message::Message::Update(update.clone())),
            };
            let mut wire = Vec::new();
            Outgoing {
                update,
                snapshot: None,
            }
            .encode(&mut wire);
            assert_eq!(wire, message.encode_to_vec());
        }
    }
}
