//! The protobuf compatibility rules: what a newer descriptor set may not do to an older one.
//!
//! Operators and dataplanes of neighbouring releases talk to each other during a rolling
//! upgrade, so every change to the .proto files must be additive (DESIGN §9, docs/upgrades.md).

use std::fmt::Write as _;

use prost_reflect::{
    Cardinality, DescriptorPool, EnumDescriptor, FieldDescriptor, MessageDescriptor,
    ServiceDescriptor,
};

/// One incompatible change: the full path of what changed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub path: String,
    pub what: String,
}

/// Every incompatible change from `old` to `new`, in a stable order.
pub fn breaks(old: &DescriptorPool, new: &DescriptorPool) -> Vec<Break> {
    let mut out = Vec::new();
    for message in old.all_messages().filter(|m| !m.is_map_entry()) {
        match new.get_message_by_name(message.full_name()) {
            Some(current) => check_message(&message, &current, &mut out),
            None => out.push(Break {
                path: message.full_name().to_owned(),
                what: "message removed; messages are never removed (stop using it instead)"
                    .to_owned(),
            }),
        }
    }
    for e in old.all_enums() {
        match new.get_enum_by_name(e.full_name()) {
            Some(current) => check_enum(&e, &current, &mut out),
            None => out.push(Break {
                path: e.full_name().to_owned(),
                what: "enum removed; enums are never removed".to_owned(),
            }),
        }
    }
    for service in old.services() {
        match new.get_service_by_name(service.full_name()) {
            Some(current) => check_service(&service, &current, &mut out),
            None => out.push(Break {
                path: service.full_name().to_owned(),
                what: "service removed; services are never removed".to_owned(),
            }),
        }
    }
    out
}

/// The breaks as one report, a line each, with what to do instead.
pub fn report(breaks: &[Break]) -> String {
    let mut text = String::new();
    for b in breaks {
        let _ = writeln!(text, "  {}: {}", b.path, b.what);
    }
    text
}

fn field_path(message: &MessageDescriptor, field: &FieldDescriptor) -> String {
    format!(
        "{}.{} (field {})",
        message.full_name(),
        field.name(),
        field.number()
    )
}

/// map, repeated, required or singular: what a reader expects to find on the wire.
fn cardinality(field: &FieldDescriptor) -> &'static str {
    if field.is_map() {
        "map"
    } else if field.is_list() {
        "repeated"
    } else if field.cardinality() == Cardinality::Required {
        "required"
    } else {
        "singular"
    }
}

fn check_message(old: &MessageDescriptor, new: &MessageDescriptor, out: &mut Vec<Break>) {
    for field in old.fields() {
        let path = field_path(old, &field);
        let Some(current) = new.get_field(field.number()) else {
            check_removed_field(&field, new, path, out);
            continue;
        };
        if current.name() != field.name() {
            out.push(Break {
                path: path.clone(),
                what: format!(
                    "number {} now belongs to `{}`; a field number is never reused or renamed \
                     (add a new field with a new number, and `reserved` the old one when it goes)",
                    field.number(),
                    current.name()
                ),
            });
            continue;
        }
        let (was, now) = (
            format!("{:?}", field.kind()),
            format!("{:?}", current.kind()),
        );
        if was != now {
            out.push(Break {
                path: path.clone(),
                what: format!(
                    "type changed from {was} to {now}; add a new field with the new type instead"
                ),
            });
        }
        let (was, now) = (cardinality(&field), cardinality(&current));
        if was != now {
            out.push(Break {
                path,
                what: format!("cardinality changed from {was} to {now}; add a new field instead"),
            });
        }
    }
    // A number the baseline reserved may hold data an old writer still sends.
    for field in new.fields() {
        if old.get_field(field.number()).is_none()
            && old.reserved_ranges().any(|r| r.contains(&field.number()))
        {
            out.push(Break {
                path: field_path(new, &field),
                what: format!(
                    "reuses number {}, which the baseline reserved; pick a new number",
                    field.number()
                ),
            });
        }
    }
}

fn check_removed_field(
    field: &FieldDescriptor,
    new: &MessageDescriptor,
    path: String,
    out: &mut Vec<Break>,
) {
    if let Some(moved) = new.get_field_by_name(field.name()) {
        out.push(Break {
            path,
            what: format!(
                "renumbered to {}; a field keeps its number for ever",
                moved.number()
            ),
        });
    } else if !new.reserved_ranges().any(|r| r.contains(&field.number())) {
        out.push(Break {
            path,
            what: format!(
                "field removed without `reserved`; add `reserved {}; reserved \"{}\";` to {}",
                field.number(),
                field.name(),
                new.name()
            ),
        });
    }
}

fn check_enum(old: &EnumDescriptor, new: &EnumDescriptor, out: &mut Vec<Break>) {
    for value in old.values() {
        let path = format!(
            "{}.{} (value {})",
            old.full_name(),
            value.name(),
            value.number()
        );
        match new.get_value_by_name(value.name()) {
            Some(current) if current.number() != value.number() => out.push(Break {
                path,
                what: format!(
                    "renumbered to {}; an enum value keeps its number for ever",
                    current.number()
                ),
            }),
            Some(_) => {}
            None if new.reserved_ranges().any(|r| r.contains(&value.number())) => {}
            None => out.push(Break {
                path,
                what: match new.get_value(value.number()) {
                    Some(other) => format!(
                        "number {} now belongs to `{}`; enum values are never renamed or reused",
                        value.number(),
                        other.name()
                    ),
                    None => format!(
                        "enum value removed without `reserved`; add `reserved {};` to {}",
                        value.number(),
                        new.name()
                    ),
                },
            }),
        }
    }
}

fn check_service(old: &ServiceDescriptor, new: &ServiceDescriptor, out: &mut Vec<Break>) {
    for method in old.methods() {
        let path = method.full_name().to_owned();
        let Some(current) = new.methods().find(|m| m.name() == method.name()) else {
            out.push(Break {
                path,
                what: "method removed; methods are never removed".to_owned(),
            });
            continue;
        };
        let signature = |m: &prost_reflect::MethodDescriptor| {
            format!(
                "({}{}) returns ({}{})",
                if m.is_client_streaming() {
                    "stream "
                } else {
                    ""
                },
                m.input().full_name(),
                if m.is_server_streaming() {
                    "stream "
                } else {
                    ""
                },
                m.output().full_name()
            )
        };
        let (was, now) = (signature(&method), signature(&current));
        if was != now {
            out.push(Break {
                path,
                what: format!("signature changed from {was} to {now}; add a new method instead"),
            });
        }
    }
}
