//! Identify/alias: when an anonymous id identifies as a known user, the anonymous id's task
//! takes its profile, devices, event history and the ids it remembers having seen (event ids,
//! trigger occurrences judged: see `dedup`) out into a [`UserMerge`] for the known user's task,
//! and keeps a link (`links` store) so later records for the anonymous id go to the known user.
//! The known user's task merges: devices union, history added, the known user's own properties
//! win on conflict, the ids seen kept under the known user. Taking out, linking and sending the
//! merge are one transaction, and a repeated alias finds the link: a merge happens once.

use crate::{
    model::{AliasRecord, HistoryCount, SeenEntry, UserMerge},
    runtime::{ProcessError, ProcessorContext, ProcessorCounter, RuntimeError},
    settings::Settings,
};

use super::{dedup, history, Profile, HISTORY, PROFILES};

/// Name of the store of links: anonymous id → the known user it merged into.
pub(super) const LINKS: &str = "links";

/// Aliases handled, by outcome: `merged`, `repeated` (the link was there), `same_id`.
pub(super) static ALIASES: ProcessorCounter = ProcessorCounter {
    name: "ingest_aliases_total",
    help: "Aliases (anonymous id identified as a known user) handled, by outcome",
    label: "outcome",
};

/// The known user `user` merged into, if it was an anonymous id that identified.
pub(super) fn link_of(
    ctx: &mut ProcessorContext<'_>,
    user: &str,
) -> Result<Option<String>, RuntimeError> {
    ctx.store(LINKS)?.get_as::<String>(user.as_bytes())
}

/// What `alias`'s anonymous id has, as a merge for the known user; `None` when there is
/// nothing to do (the alias was handled before, or names one id twice). An anonymous id
/// already merged into another user is refused. The ids seen are those still within their
/// windows under `settings` (bounded: see [`dedup::Memory::entries_of`]).
pub(super) fn take(
    ctx: &mut ProcessorContext<'_>,
    alias: &AliasRecord,
    settings: &Settings,
) -> Result<Option<UserMerge>, ProcessError> {
    let anonymous = &alias.anonymous_id;
    if *anonymous == alias.user_id {
        ctx.count(&ALIASES, "same_id");
        return Ok(None);
    }
    match link_of(ctx, anonymous)? {
        Some(known) if known == alias.user_id => {
            ctx.count(&ALIASES, "repeated");
            return Ok(None);
        }
        Some(known) => {
            return Err(ProcessError::reject(format!(
                "anonymous_id: {anonymous:?} already merged into {known:?}, not into {:?}",
                alias.user_id
            )))
        }
        None => {}
    }
    let profile = ctx.store(PROFILES)?.get_as::<Profile>(anonymous.as_bytes())?.unwrap_or_default();
    let history = history::entries(&ctx.store(HISTORY)?, anonymous)?
        .into_iter()
        .map(|entry| HistoryCount {
            key: entry.key,
            day: entry.day,
            count: i32::try_from(entry.count).unwrap_or(i32::MAX),
        })
        .collect();
    let mut seen = Vec::new();
    for (memory, window_ms) in dedup::windows(settings) {
        for (id, first_seen_ms) in memory.entries_of(ctx, anonymous, window_ms)? {
            seen.push(SeenEntry { memory: memory.store.to_string(), id, first_seen_ms });
        }
    }
    Ok(Some(UserMerge {
        app_id: alias.app_id.clone(),
        anonymous_id: anonymous.clone(),
        user_id: alias.user_id.clone(),
        timestamp_ms: alias.timestamp_ms,
        properties: profile.properties,
        devices: profile.devices,
        history,
        seen,
    }))
}

/// Forgets what `alias`'s anonymous id had (now on its way to the known user) and links it
/// to the known user.
pub(super) fn link(
    ctx: &mut ProcessorContext<'_>,
    alias: &AliasRecord,
) -> Result<(), RuntimeError> {
    let anonymous = alias.anonymous_id.as_bytes();
    ctx.store(PROFILES)?.delete(anonymous)?;
    let entries = history::entries(&ctx.store(HISTORY)?, &alias.anonymous_id)?;
    let mut store = ctx.store(HISTORY)?;
    for entry in entries {
        store.delete(&entry.store_key)?;
    }
    for memory in dedup::MEMORIES {
        memory.forget(ctx, &alias.anonymous_id)?;
    }
    ctx.store(LINKS)?.put_as(anonymous, &alias.user_id)?;
    ctx.count(&ALIASES, "merged");
    Ok(())
}

/// Merges what an anonymous id had into the known user `merge.user_id`: devices union (the
/// known user's first, at most `max_devices`), history counts added, properties the known user
/// lacks, the ids seen kept (see [`dedup::Memory::keep`]; a memory this version does not have
/// is passed over).
pub(super) fn merge_into(
    ctx: &mut ProcessorContext<'_>,
    merge: UserMerge,
    max_devices: usize,
) -> Result<(), ProcessError> {
    let user = merge.user_id.as_bytes();
    let mut profiles = ctx.store(PROFILES)?;
    let mut profile = profiles.get_as::<Profile>(user)?.unwrap_or_default();
    for (name, value) in merge.properties {
        profile.properties.entry(name).or_insert(value);
    }
    for device in merge.devices {
        let known = profile
            .devices
            .iter()
            .any(|d| d.device_id == device.device_id || d.token == device.token);
        if !known && profile.devices.len() < max_devices {
            profile.devices.push(device);
        }
    }
    profiles.put_as(user, &profile)?;
    let mut store = ctx.store(HISTORY)?;
    for entry in merge.history {
        let count = u32::try_from(entry.count).unwrap_or(0);
        history::add(&mut store, &merge.user_id, &entry.key, entry.day, count)?;
    }
    for entry in merge.seen {
        if let Some(memory) = dedup::Memory::named(&entry.memory) {
            memory.keep(ctx, &merge.user_id, &entry.id, entry.first_seen_ms)?;
        }
    }
    Ok(())
}
