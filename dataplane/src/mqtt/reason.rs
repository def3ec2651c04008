//! The MQTT reason codes the front-end answers with, per protocol version (DESIGN §6).

use fleetward_policy::{DenyReason, TopicError};
use rumqttd::protocol::{ConnectReturnCode, QoS, SubscribeReasonCode};

use super::codec::Version;

/// CONNACK code for a refused authentication. v3 has only 0x04/0x05; v5 tells a bad
/// credential (0x86) from a subject that may not connect (0x87).
pub(crate) fn connack_for(version: Version, reason: DenyReason) -> ConnectReturnCode {
    match (version, reason) {
        (Version::V4, DenyReason::PolicyUnavailable) => ConnectReturnCode::ServiceUnavailable,
        (Version::V4, _) => ConnectReturnCode::NotAuthorized,
        (Version::V5, DenyReason::PolicyUnavailable) => ConnectReturnCode::ServerUnavailable,
        (
            Version::V5,
            DenyReason::BadCredential | DenyReason::UnknownSubject | DenyReason::UnknownTenant,
        ) => ConnectReturnCode::BadUserNamePassword,
        (Version::V5, _) => ConnectReturnCode::NotAuthorized,
    }
}

/// CONNACK code when the username is missing or not `<tenant>/<thing>`.
pub(crate) fn connack_bad_username(version: Version) -> ConnectReturnCode {
    match version {
        Version::V4 => ConnectReturnCode::BadUserNamePassword,
        Version::V5 => ConnectReturnCode::BadUserNamePassword,
    }
}

/// CONNACK code when the pod is at its connection limit.
pub(crate) fn connack_busy(version: Version) -> ConnectReturnCode {
    match version {
        Version::V4 => ConnectReturnCode::ServiceUnavailable,
        Version::V5 => ConnectReturnCode::ServerBusy,
    }
}

/// CONNACK code for a client id the server will not take.
pub(crate) fn connack_bad_client_id(_: Version) -> ConnectReturnCode {
    // 0x02 in v3, 0x85 in v5: the codec writes the right byte for each.
    ConnectReturnCode::ClientIdentifierNotValid
}

/// Whether a grammar error means the filter or topic is not valid MQTT at all (as opposed to
/// valid MQTT that Fleetward does not allow, such as `#` or `$SYS/#`).
pub(crate) fn is_invalid_mqtt(e: TopicError) -> bool {
    matches!(
        e,
        TopicError::Empty
            | TopicError::InvalidUtf8
            | TopicError::ContainsNul
            | TopicError::HashNotLast
            | TopicError::PartialWildcard
            | TopicError::WildcardInTopicName
            | TopicError::InvalidShareGroup
            | TopicError::ShareMissingFilter
    )
}

/// SUBACK code for a refused filter.
pub(crate) fn suback_refused(version: Version, invalid: bool) -> SubscribeReasonCode {
    match (version, invalid) {
        (Version::V4, _) => SubscribeReasonCode::Failure,
        (Version::V5, true) => SubscribeReasonCode::TopicFilterInvalid,
        (Version::V5, false) => SubscribeReasonCode::NotAuthorized,
    }
}

/// SUBACK code for a granted QoS.
pub(crate) fn suback_granted(qos: u8) -> SubscribeReasonCode {
    SubscribeReasonCode::Success(qos_of(qos))
}

pub(crate) fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deny_reason_has_a_code_valid_in_its_version() {
        for reason in DenyReason::ALL {
            let v3 = connack_for(Version::V4, reason);
            assert!(matches!(
                v3,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::ServiceUnavailable
            ));
            let v5 = connack_for(Version::V5, reason);
            assert!(matches!(
                v5,
                ConnectReturnCode::BadUserNamePassword
                    | ConnectReturnCode::NotAuthorized
                    | ConnectReturnCode::ServerUnavailable
            ));
        }
        assert_eq!(
            connack_for(Version::V5, DenyReason::SubjectDisabled),
            ConnectReturnCode::NotAuthorized
        );
        assert_eq!(
            connack_for(Version::V5, DenyReason::BadCredential),
            ConnectReturnCode::BadUserNamePassword
        );
    }

    #[test]
    fn fleetward_refusals_are_not_authorized_and_broken_filters_invalid() {
        assert!(!is_invalid_mqtt(TopicError::WildcardInTenant));
        assert!(!is_invalid_mqtt(TopicError::SysTopic));
        assert!(is_invalid_mqtt(TopicError::HashNotLast));
        assert_eq!(
            suback_refused(Version::V5, false),
            SubscribeReasonCode::NotAuthorized
        );
        assert_eq!(
            suback_refused(Version::V4, false),
            SubscribeReasonCode::Failure
        );
    }
}
