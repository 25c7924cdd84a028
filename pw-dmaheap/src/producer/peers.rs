//! The consumers' links and devices: PipeWire 1.6 hands each port the capabilities of the
//! peers it is linked to (`SPA_PARAM_PeerCapability`), one entry per linked port, again
//! whenever a link comes or goes.
//!
//! - A consumer that does device-id negotiation names the DRM devices it can use in
//!   `pipewire.device-ids` (`{"available-devices": ["<hex of a dev_t>", ...]}`). The producer
//!   resolves them with heapcore's device model, probes what each takes (cached), and the heap
//!   choice rules out what one refused; it logs them, explains them with its heap choice, and
//!   reports them ([`Event::PeerDevices`](super::Event)).
//! - The list of linked ports tells a consumer leaving (its port is gone) from one pausing
//!   (its stream stops, its link stays). Without it (PipeWire before 1.6) the producer seals
//!   its buffers whenever the stream stops streaming, and renegotiates when it streams again
//!   on them; with it, only when the last consumer's link is gone. That matters: PipeWire 1.6
//!   keeps a live link's io area across a renegotiation, so a consumer that paused and
//!   resumed (pipewiresrc does so while it starts) could be handed the id of a buffer of the
//!   new set that the producer is drawing into.

use heapcore::device::DeviceReport;

use pipewire::spa::pod::deserialize::PodDeserializer;
use pipewire::spa::pod::{Pod, Value};

use super::report::{Event, PeerDevice};
use super::session;
use super::state::Inner;
use crate::raw::spa_abi;

/// `PW_CAPABILITY_DEVICE_IDS`.
pub const CAPABILITY_DEVICE_IDS: &str = "pipewire.device-ids";
/// `PW_CAPABILITY_DEVICE_ID_NEGOTIATION`.
pub const CAPABILITY_DEVICE_ID_NEGOTIATION: &str = "pipewire.device-id-negotiation";

/// The ports a `SPA_PARAM_PeerCapability` pod lists (one property per linked peer port).
pub(crate) fn peer_ports(pod: &Pod) -> Vec<u32> {
    match PodDeserializer::deserialize_any_from(pod.as_bytes()) {
        Ok((_, Value::Object(peers))) if peers.type_ == spa_abi::TYPE_OBJECT_PEER_PARAM => {
            peers.properties.iter().map(|p| p.key).collect()
        }
        _ => Vec::new(),
    }
}

/// The key/value items of each peer's `SPA_PARAM_Capability` dict in a
/// `SPA_PARAM_PeerCapability` pod (peers without capabilities give none).
pub(crate) fn peer_capabilities(pod: &Pod) -> Vec<Vec<(String, String)>> {
    let Ok((_, Value::Object(peers))) = PodDeserializer::deserialize_any_from(pod.as_bytes())
    else {
        return Vec::new();
    };
    if peers.type_ != spa_abi::TYPE_OBJECT_PEER_PARAM {
        return Vec::new();
    }
    peers
        .properties
        .iter()
        .filter_map(|peer| match &peer.value {
            Value::Object(dict) if dict.type_ == spa_abi::TYPE_OBJECT_PARAM_DICT => dict
                .properties
                .iter()
                .find(|p| p.key == spa_abi::PARAM_DICT_INFO)
                .map(|p| dict_items(&p.value)),
            _ => None,
        })
        .collect()
}

/// `Struct(Int n_items, (String key, String value)*)`.
fn dict_items(info: &Value) -> Vec<(String, String)> {
    let Value::Struct(fields) = info else {
        return Vec::new();
    };
    let strings: Vec<&str> = fields
        .iter()
        .skip(1)
        .filter_map(|v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    strings
        .chunks_exact(2)
        .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
        .collect()
}

/// The `dev_t`s of a `pipewire.device-ids` value: each a hex string of the `dev_t`'s bytes in
/// memory order (PipeWire's `encode_hex`).
pub(crate) fn device_ids(json: &str) -> Vec<u64> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    value
        .get("available-devices")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| decode_dev_t(d.as_str()?))
        .collect()
}

fn decode_dev_t(hex: &str) -> Option<u64> {
    if hex.len() != 16 {
        return None;
    }
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(u64::from_ne_bytes(bytes))
}

/// The hex string PipeWire sends for `devnum` (for consumers that name their devices).
pub fn encode_dev_t(devnum: u64) -> String {
    devnum
        .to_ne_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `param_changed(SPA_PARAM_PeerCapability)`: records the linked ports and reports the
/// devices the linked consumers named. The last consumer's link going away seals the
/// buffers; whether the node is suspended too is up to the caller (only a paused stream
/// is: a disconnecting one is going away with its buffers). Says whether that happened.
pub(super) fn on_peer_capability(inner: &mut Inner, param: Option<&Pod>) -> bool {
    let ports = param.map(peer_ports).unwrap_or_default();
    let before = inner.peer_ports.replace(ports.clone());
    let last_gone = before.is_some_and(|b| !b.is_empty()) && ports.is_empty();
    if last_gone {
        log::debug!(
            "{}: the last consumer's link is gone",
            inner.config.node_name
        );
        session::seal(inner, false);
    }
    let capabilities = param.map(peer_capabilities).unwrap_or_default();
    let negotiates = capabilities.iter().flatten().any(|(k, v)| {
        k == CAPABILITY_DEVICE_ID_NEGOTIATION && v.parse::<u32>().is_ok_and(|v| v >= 1)
    });
    let devices: Vec<PeerDevice> = capabilities
        .iter()
        .flatten()
        .filter(|(k, _)| k == CAPABILITY_DEVICE_IDS)
        .flat_map(|(_, v)| device_ids(v))
        .map(PeerDevice::from_devnum)
        .collect();
    let node = &inner.config.node_name;
    if devices.is_empty() {
        log::debug!(
            "{node}: peer capabilities of {} consumer(s), no devices named{}",
            capabilities.len(),
            if negotiates {
                " (they negotiate device ids)"
            } else {
                ""
            }
        );
    } else {
        log::info!(
            "{node}: the consumer names its devices ({CAPABILITY_DEVICE_IDS}): {}",
            devices
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if devices != inner.peer_devices {
        let reports = device_reports(&devices, inner.pools.allocator());
        inner.pools.set_devices(reports);
        inner.peer_devices = devices.clone();
        inner.events.push(Event::PeerDevices(devices));
    }
    last_gone
}

/// What each named device takes (heapcore's probe, cached per device): the heap choice for
/// buffers allocated from now on rules out what a device refused. A device this machine
/// lacks, or cannot probe, is left out and said so.
fn device_reports(devices: &[PeerDevice], alloc: &heapcore::Allocator) -> Vec<DeviceReport> {
    devices
        .iter()
        .filter_map(|peer| {
            let device = peer.device.as_ref()?;
            DeviceReport::for_device(device, alloc)
                .inspect_err(|e| log::warn!("cannot probe {peer}, the heap choice ignores it: {e}"))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use pipewire::spa::pod::serialize::PodSerializer;
    use pipewire::spa::pod::{Object, Property, PropertyFlags};

    use super::*;

    /// A `SPA_PARAM_PeerCapability` pod as PipeWire builds it: one property per peer port,
    /// each a `ParamDict` object (or None for a peer without capabilities).
    fn peer_capability(peers: &[Option<&[(&str, &str)]>]) -> Vec<u8> {
        let properties = peers
            .iter()
            .enumerate()
            .map(|(i, items)| Property {
                key: 100 + i as u32,
                flags: PropertyFlags::empty(),
                value: match items {
                    None => Value::None,
                    Some(items) => Value::Object(crate::params::capability_object(items)),
                },
            })
            .collect();
        let object = Value::Object(Object {
            type_: spa_abi::TYPE_OBJECT_PEER_PARAM,
            id: spa_abi::PARAM_PEER_CAPABILITY,
            properties,
        });
        PodSerializer::serialize(Cursor::new(Vec::new()), &object)
            .unwrap()
            .0
            .into_inner()
    }

    #[test]
    fn device_ids_are_dev_t_bytes_in_hex() {
        // PipeWire's own example: makedev(100, 100) and makedev(200, 200).
        let json = r#"{"available-devices": ["6464000000000000","c8c8000000000000"]}"#;
        let ids = device_ids(json);
        assert_eq!(
            ids,
            [rustix::fs::makedev(100, 100), rustix::fs::makedev(200, 200)]
        );
        assert_eq!(encode_dev_t(ids[0]), "6464000000000000");
        assert!(device_ids("not json").is_empty());
        assert!(device_ids(r#"{"available-devices": ["12"]}"#).is_empty());
    }

    #[test]
    fn the_peer_capability_dicts_are_read() {
        let ids = format!(
            r#"{{"available-devices": ["{}"]}}"#,
            encode_dev_t(rustix::fs::makedev(226, 128))
        );
        let bytes = peer_capability(&[
            None,
            Some(&[
                (CAPABILITY_DEVICE_ID_NEGOTIATION, "1"),
                (CAPABILITY_DEVICE_IDS, ids.as_str()),
            ]),
        ]);
        let pod = Pod::from_bytes(&bytes).unwrap();
        assert_eq!(peer_ports(pod), [100, 101]);
        let caps = peer_capabilities(pod);
        assert_eq!(caps.len(), 1, "{caps:?}");
        assert_eq!(
            caps[0][0],
            (CAPABILITY_DEVICE_ID_NEGOTIATION.into(), "1".into())
        );
        let named: Vec<u64> = caps[0]
            .iter()
            .filter(|(k, _)| k == CAPABILITY_DEVICE_IDS)
            .flat_map(|(_, v)| device_ids(v))
            .collect();
        assert_eq!(named, [rustix::fs::makedev(226, 128)]);
    }

    #[test]
    fn a_device_this_machine_lacks_says_so() {
        let absent = PeerDevice::from_devnum(rustix::fs::makedev(4095, 4095));
        assert_eq!(absent.to_string(), "4095:4095 (not on this machine)");
        // /dev/null is 1:3 everywhere.
        let null = PeerDevice::from_devnum(rustix::fs::makedev(1, 3));
        assert_eq!(
            null.device.map(|d| d.node),
            Some(std::path::PathBuf::from("/dev/null"))
        );
    }
}
