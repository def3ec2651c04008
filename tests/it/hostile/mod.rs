//! The hostile-client suite: the real `fleetward start` binary, attacked the way a hostile
//! client or a noisy tenant would, one module per area of the attack surface. Each test
//! checks that the attack is refused with the protocol's own answer and that the process
//! goes on serving everyone else.

mod harness;
mod identity;
mod quotas;
mod router;
mod sockets;

use std::time::Duration;

/// The harness itself: an untouched `fleetward start` serves a legitimate pub/sub.
#[test]
fn an_unattacked_process_serves_a_legitimate_pub_sub() {
    let scratch = harness::Scratch::with_examples("baseline");
    let mut start = scratch.start(|o| o);
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}
