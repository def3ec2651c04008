//! Delivery matching every adapter shares: whether a subject may receive a message on a topic
//! its subscription matches, while a subtopic deny of its grants overlaps the subscription
//! (DESIGN §4). The subscription's [`DeliveryGate`] remembers the last answers; the decision
//! cache answers the rest.

use fleetward_policy::{DeliveryGate, Subject};

use super::state::Ingress;
use crate::router::Router;

impl<R: Router> Ingress<R> {
    /// Whether `subject` may receive a message on the full `topic` under the snapshot being
    /// enforced now, asked through the subscription's `gate`.
    pub(crate) fn may_deliver(
        &self,
        gate: &mut DeliveryGate,
        subject: &Subject,
        topic: &str,
    ) -> bool {
        let snapshot = self.policy.borrow();
        gate.allows(&self.cache, &**snapshot, subject, topic)
    }
}
