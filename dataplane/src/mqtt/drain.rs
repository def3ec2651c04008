//! What an MQTT client is told when the pod drains: v5 DISCONNECT 0x8B (Server shutting down),
//! or 0x9C (Use another server) with a Server Reference when the pod has one; a v3 client's
//! socket just closes, as v3 has no server DISCONNECT.

use rumqttd::protocol::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet};

use super::codec::Version;
use crate::ingress::Drain;

/// The DISCONNECT a draining pod sends a client of `version`, if its protocol has one.
pub(crate) fn disconnect(drain: &Drain, version: Version) -> Option<Packet> {
    if version != Version::V5 {
        return None;
    }
    let (reason_code, reason) = match drain.server_reference() {
        Some(_) => (
            DisconnectReasonCode::UseAnotherServer,
            "the server is shutting down: use the server reference",
        ),
        None => (
            DisconnectReasonCode::ServerShuttingDown,
            "the server is shutting down: reconnect",
        ),
    };
    // Always with properties: rumqttd 0.20 miscounts the length of a DISCONNECT with a reason
    // code and no properties.
    Some(Packet::Disconnect(
        Disconnect { reason_code },
        Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason.to_owned()),
            user_properties: Vec::new(),
            server_reference: drain.server_reference().map(str::to_owned),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn read_back(packet: Packet) -> Packet {
        let mut buf = BytesMut::new();
        let codec = crate::mqtt::Codec::new(Version::V5);
        codec.write(packet, &mut buf).expect("encodes");
        let reader = crate::mqtt::Codec::new(Version::V5);
        reader
            .read(&mut buf, 1024)
            .expect("decodes")
            .expect("a whole packet")
            .packet
    }

    #[test]
    fn a_v5_client_is_told_the_server_shuts_down_or_where_to_go() {
        let Some(Packet::Disconnect(d, _)) = disconnect(&Drain::default(), Version::V5) else {
            panic!("a v5 client gets a DISCONNECT");
        };
        assert_eq!(d.reason_code, DisconnectReasonCode::ServerShuttingDown);
        let moved = Drain::new(Some("mqtt-b.example.com:1883".into()));
        let packet = disconnect(&moved, Version::V5).expect("a DISCONNECT");
        let Packet::Disconnect(d, Some(props)) = read_back(packet) else {
            panic!("a DISCONNECT with properties");
        };
        assert_eq!(d.reason_code, DisconnectReasonCode::UseAnotherServer);
        assert_eq!(
            props.server_reference.as_deref(),
            Some("mqtt-b.example.com:1883")
        );
    }

    #[test]
    fn a_v3_client_gets_no_disconnect() {
        assert!(disconnect(&Drain::default(), Version::V4).is_none());
    }
}
