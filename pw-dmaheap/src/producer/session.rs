//! A consumer's session ends: its buffers are sealed (never drawn into again) and the node is
//! suspended so that PipeWire removes them; a link that comes up on sealed buffers is made to
//! renegotiate.

use pipewire as pw;
use pw::core::CoreRc;

use super::state::{EINVAL, Inner, Outcome, fail};

/// The stream stopped streaming: its consumer left or paused, so the buffers it had are
/// sealed (never drawn into again) and, if `suspend`, the node is to be suspended so PipeWire
/// removes them.
pub(super) fn seal(inner: &mut Inner, suspend: bool) -> Outcome {
    let Some(active) = inner.active.as_mut() else {
        return Outcome::Done;
    };
    let newly = !std::mem::replace(&mut active.sealed, true);
    if !suspend || inner.slots.is_empty() {
        return Outcome::Done;
    }
    if newly {
        log::info!(
            "{}: the consumer left or paused; its {} buffers are sealed until PipeWire removes \
             them",
            inner.config.node_name,
            inner.slots.len()
        );
    }
    Outcome::Suspend
}

/// The stream streams again while its buffers are sealed: a link came up with the buffers
/// of the session that ended before the suspend took effect. Announcing the formats again
/// (as a resize does) makes PipeWire renegotiate that link, with new buffers.
pub(super) fn renegotiate_if_sealed(inner: &mut Inner) -> Outcome {
    if !inner.active.as_ref().is_some_and(|a| a.sealed) {
        return Outcome::Done;
    }
    log::info!(
        "{}: a consumer linked to sealed buffers; renegotiating for new ones",
        inner.config.node_name
    );
    match inner.enum_formats() {
        Ok(pods) => Outcome::Announce {
            what: "renegotiating sealed buffers",
            pods,
        },
        Err(e) => fail(EINVAL, e),
    }
}

/// Suspends our own node, so that PipeWire removes its buffers now.
///
/// PipeWire keeps an output port's format and buffers when its link goes away, and hands them
/// to the next link of the same format (`impl-link.c`: "we don't clear output buffers when
/// the link goes away. They will get cleared when the node goes to suspend"); WirePlumber
/// suspends a node only after it was idle for 5 s. Suspending the node as soon as a session
/// ends makes PipeWire remove the buffers at once, so the next consumer gets new ones.
///
/// The registry and the node proxy exist only for this: they are destroyed right after the
/// command (which the daemon handles first, as it reads the connection in order). Kept, they
/// would have the daemon send this connection every global and node change, and PipeWire
/// 0.3.65 can then take one of WirePlumber's results for the end of a consumer's buffer
/// allocation (the consumer gets buffers without memory; the daemon logs "invalid memory
/// type"): its link waits for a ping numbered by the messages sent on this connection.
pub(super) fn suspend_node(core: &CoreRc, node_id: u32, name: &str) {
    if node_id == pw::constants::ID_ANY {
        return;
    }
    let global = pw::registry::GlobalObject::<&pw::spa::utils::dict::DictRef> {
        id: node_id,
        permissions: pw::permissions::PermissionFlags::empty(),
        type_: pw::types::ObjectType::Node,
        version: 0,
        props: None,
    };
    let bound = core
        .get_registry_rc()
        .and_then(|registry| registry.bind::<pw::node::Node, _>(&global));
    match bound {
        Ok(node) => {
            log::debug!("{name}: suspending node {node_id} so PipeWire removes its buffers");
            node.send_command(&pw::spa::node::command::NodeCommand::new(
                pw::spa::node::command::NodeCommandId::SUSPEND,
            ));
        }
        Err(e) => log::warn!(
            "{name}: cannot bind node {node_id} to suspend it ({e}); PipeWire removes its \
             buffers when WirePlumber suspends it"
        ),
    }
}
