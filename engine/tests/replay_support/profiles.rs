//! A profile with one device, the one builder every test shares: the profile update of app
//! `shop` giving a user one device (`d-<user>`, token `tok-<user>`) on a platform, with the
//! properties `set`. Included by path by the engine's replay drivers
//! (`replay_support/sharded.rs`, which re-exports it) and the root package's live helpers
//! (`tests/common/mod.rs`: `#[path = "../../engine/tests/replay_support/profiles.rs"]`).
#![allow(dead_code)]

use herald_engine::model::{Device, Platform, ProfileUpdate, PropertyValue};

/// `user`'s device on `platform`: id `d-<user>`, token `tok-<user>`.
pub fn device_on(user: &str, platform: Platform) -> Device {
    Device {
        device_id: format!("d-{user}"),
        platform,
        token: format!("tok-{user}"),
        app_version: None,
        os_version: None,
        make: None,
        model: None,
        sdk_version: None,
    }
}

/// The profile update of app `shop` at `at` giving `user` one device on `platform` and setting
/// the properties `set`.
pub fn profile_update(
    user: &str,
    platform: Platform,
    at: i64,
    set: &[(&str, PropertyValue)],
) -> ProfileUpdate {
    ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: at,
        set: set.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        unset: Vec::new(),
        devices_added: vec![device_on(user, platform)],
        tokens_removed: Vec::new(),
    }
}
