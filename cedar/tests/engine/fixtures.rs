//! Small builders of resources and topics.

use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, Group, KeyDigest, Member, Qos, Role, SubjectKind,
    SubtopicPattern, Tenant, TenantLimits, Thing, Topic, TopicLimits, User, parse_filter,
};

pub fn mk_tenant(name: &str) -> Tenant {
    Tenant {
        provisioning: Default::default(),
        device_ca: Default::default(),
        engine: Default::default(),
        name: name.into(),
        uid: String::new(),
        suspended: false,
        limits: TenantLimits::default(),
        web: Default::default(),
    }
}

pub fn mk_thing(tenant: &str, name: &str) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: tenant.into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(format!("key-of-{name}").as_bytes())],
        disabled: false,
        mountpoint: None,
        max_connections: None,
    }
}

pub fn mk_user(tenant: &str, name: &str, role: Role) -> User {
    User {
        tenant: tenant.into(),
        name: name.into(),
        role,
        password_hash: None,
        token_epoch: 1,
        disabled: false,
    }
}

pub fn mk_channel(tenant: &str, name: &str) -> Channel {
    Channel {
        history_retention_secs: Default::default(),
        tenant: tenant.into(),
        name: name.into(),
        uid: String::new(),
        max_qos: Qos::AtLeastOnce,
        retained_allowed: true,
        max_message_size: None,
        delivery_metadata: false,
    }
}

pub fn mk_group(tenant: &str, name: &str, members: &[(SubjectKind, &str)]) -> Group {
    Group {
        tenant: tenant.into(),
        name: name.into(),
        members: members
            .iter()
            .map(|(kind, name)| Member {
                kind: *kind,
                name: (*name).into(),
            })
            .collect(),
    }
}

pub fn pats(list: &[&str]) -> Vec<SubtopicPattern> {
    list.iter()
        .map(|p| SubtopicPattern::parse(p).expect("valid pattern"))
        .collect()
}

pub fn mk_grant(
    tenant: &str,
    name: &str,
    subject: GrantSubject,
    channel: &str,
    actions: Actions,
    allow: &[&str],
    deny: &[&str],
) -> Grant {
    Grant {
        tenant: tenant.into(),
        name: name.into(),
        subject,
        channel: channel.into(),
        actions,
        allow: pats(allow),
        deny: pats(deny),
    }
}

/// A topic name or filter, parsed as a filter (so a publish with wildcards parses too).
pub fn topic(text: &str) -> Topic<'_> {
    parse_filter(text, &TopicLimits::default()).expect("a valid topic")
}
